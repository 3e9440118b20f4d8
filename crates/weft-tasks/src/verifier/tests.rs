//! Data-driven verifier cases: (problem, output, expected outcome).

use super::*;

const APR_FINAL: &str = include_str!("../../tests/fixtures/apr_trace_example.txt");

/// Expected outcome, by failure reason name (`ok` for correct).
fn outcome(v: &Verdict) -> &'static str {
    match &v.failure {
        None => "ok",
        Some(Failure::NoAnswer) => "no_answer",
        Some(Failure::Unparsable { .. }) => "unparsable",
        Some(Failure::WrongArithmetic { .. }) => "wrong_arithmetic",
        Some(Failure::IllegalStep { .. }) => "illegal_step",
        Some(Failure::NumberUnavailable { .. }) => "number_unavailable",
        Some(Failure::NumbersLeft { .. }) => "numbers_left",
        Some(Failure::WrongResult { .. }) => "wrong_result",
    }
}

fn main_call_1() -> &'static str {
    let start = APR_FINAL.find("===== main_call 1 =====\n").unwrap() + 24;
    let end = APR_FINAL.find("===== sub_call 0.0").unwrap();
    &APR_FINAL[start..end]
}

#[test]
fn goal_reached_traces() {
    let p: Problem = "17 62 25 7 -> 63".parse().unwrap();
    let v = verify(&p, main_call_1());
    assert_eq!(outcome(&v), "ok", "{v:?}");
    assert_eq!(v.form, Some(AnswerForm::GoalReached));
    assert_eq!(v.steps, ["25-17=8", "8-7=1", "62+1=63"]);
    // The SoS+ example (single final path after inline sub searches).
    let q: Problem = "92 2 58 6 -> 23".parse().unwrap();
    let v = verify(
        &q,
        include_str!("../../tests/fixtures/sosp_trace_example.txt"),
    );
    assert_eq!(outcome(&v), "ok", "{v:?}");
    assert_eq!(v.steps, ["92-58=34", "34/2=17", "6+17=23"]);
    // Against the wrong problem, the same path fails on a number.
    let other: Problem = "17 62 25 8 -> 63".parse().unwrap();
    assert_eq!(
        outcome(&verify(&other, main_call_1())),
        "number_unavailable"
    );
}

#[test]
fn table_of_outputs() {
    let cases: &[(&str, &str, &str)] = &[
        // Plain equations.
        ("17 62 25 7 -> 63", "62+(25-17-7) = 63", "ok"),
        ("17 62 25 7 -> 63", "The answer:\n25-17=8\n8-7=1\n62+1=63\n\n", "ok"),
        ("17 62 25 7 -> 63", "<answer> 62 + (25 - 17 - 7) </answer>", "ok"),
        ("17 62 25 7 -> 63", "(25-17)*7 = 56", "numbers_left"),
        ("17 62 25 7 -> 63", "62+(25-17-7) = 64", "wrong_arithmetic"),
        ("17 62 25 7 -> 63", "62+(25-17-6) = 63", "number_unavailable"),
        ("17 62 25 7 -> 63", "62+(25-17-7)+17 = 80", "number_unavailable"),
        ("17 62 25 7 -> 63", "62-(17-25+7) = 63", "illegal_step"),
        ("4 6 -> 2", "4/6 = 2", "illegal_step"),
        ("2 3 -> 6", "2*3 = 6.", "ok"),
        ("2 3 -> 5", "2*3 = 6", "wrong_result"),
        ("2 3 -> 6", "2*(3 = 6", "unparsable"),
        ("2 3 -> 6", "2*3 = 6 = 6", "unparsable"),
        ("2 3 -> 6", "I think it is six.", "no_answer"),
        ("2 3 -> 6", "", "no_answer"),
        ("2 3 -> 6", "<answer></answer>", "no_answer"),
        ("2 3 -> 6", "99999999999999999999*1 = 1", "unparsable"),
        // Goal-Reached convention, broken in different ways.
        (
            "2 3 -> 6",
            "Current State: 6:[2, 3], Operations: []\nExploring Operation: 2*3=6, Resulting Numbers: [6]\n6,6 equal: Goal Reached\n",
            "ok",
        ),
        (
            "2 3 -> 5",
            "Current State: 5:[2, 3], Operations: []\nExploring Operation: 2*3=5, Resulting Numbers: [5]\n5,5 equal: Goal Reached\n",
            "wrong_arithmetic",
        ),
        (
            "2 3 4 -> 24",
            "Current State: 24:[4, 6], Operations: ['2*3=6']\nExploring Operation: 4*6=24, Resulting Numbers: [24]\n24,24 equal: Goal Reached\n",
            "ok",
        ),
        (
            "2 3 4 -> 24",
            "Current State: 24:[4, 6], Operations: []\nExploring Operation: 4*6=24, Resulting Numbers: [24]\n24,24 equal: Goal Reached\n",
            "number_unavailable",
        ),
        ("2 3 -> 6", "6,6 equal: Goal Reached\n", "unparsable"),
        (
            "2 3 -> 6",
            "Current State: 6:[2, 3], Operations: ['2*3=6'\n6,6 equal: Goal Reached",
            "unparsable",
        ),
        (
            "2 3 -> 6",
            "Current State: 6:[2, 3], Operations: []\nExploring Operation: 2 times 3, Resulting Numbers: [6]\n6,6 equal: Goal Reached",
            "unparsable",
        ),
        (
            "3 4 -> 1",
            "Current State: 1:[3, 4], Operations: []\nExploring Operation: 3-4=1, Resulting Numbers: [1]\n1,1 equal: Goal Reached",
            "illegal_step",
        ),
    ];
    for (problem, output, expected) in cases {
        let p: Problem = problem.parse().unwrap();
        let v = verify(&p, output);
        assert_eq!(outcome(&v), *expected, "{problem} / {output:?}: {v:?}");
        assert_eq!(v.correct, *expected == "ok");
    }
}

#[test]
fn the_cap_is_enforced() {
    let p: Problem = "60 70 10 -> 420".parse().unwrap();
    let capped = Rules {
        max_intermediate: Some(100),
    };
    assert_eq!(outcome(&verify(&p, "60*70/10 = 420")), "ok");
    assert_eq!(
        outcome(&verify_with(&p, "60*70/10 = 420", &capped)),
        "illegal_step"
    );
    assert_eq!(
        outcome(&verify_with(&p, "60*70=4200\n4200/10=420", &capped)),
        "illegal_step"
    );
}

#[test]
fn verdicts_serialise_with_a_reason() {
    let p: Problem = "2 3 -> 5".parse().unwrap();
    let json = serde_json::to_value(verify(&p, "2*3 = 6")).unwrap();
    assert_eq!(json["correct"], false);
    assert_eq!(json["form"], "equation");
    assert_eq!(json["failure"]["reason"], "wrong_result");
    assert_eq!(json["failure"]["value"], 6);
    let back: Verdict = serde_json::from_value(json).unwrap();
    assert_eq!(
        back.failure,
        Some(Failure::WrongResult {
            value: 6,
            target: 5
        })
    );
}

#[test]
fn arithmetic_lines_are_counted() {
    let text = "Current State: 63:[62, 7, 8], Operations: ['25-17=8']\n\
                Exploring Operation: 62+7=69, Resulting Numbers: [8, 69]\n\
                Generated Node #0,1,0: 63:[8, 69] Operation: 62+7=69\n\
                Exploring Operation: 8-7=2, Resulting Numbers: [62, 2]\n\
                (25-17)*8=64\n\
                25 * 4 = 100\n\
                Moving to Node #0,1,1\n";
    let stats = arithmetic_stats(text);
    assert_eq!(
        stats,
        ArithmeticStats {
            lines: 4,
            correct: 3
        }
    );
    assert_eq!(stats.share_correct(), Some(0.75));
    assert_eq!(arithmetic_stats("no numbers here").share_correct(), None);
    assert_eq!(arithmetic_stats("1+1=99999999999999999999999").correct, 0);
    // The real APR example: every arithmetic line is right.
    let s = arithmetic_stats(APR_FINAL);
    assert!(s.lines > 10);
    assert_eq!(s.lines, s.correct);
}

#[test]
fn steps_parse() {
    assert_eq!(
        parse_step("25-17=8"),
        Some(Step {
            a: 25,
            op: OpKind::Sub,
            b: 17,
            result: 8
        })
    );
    assert_eq!(
        parse_step(" 92 / 2 = 46 ").map(|s| s.to_string()),
        Some("92/2=46".into())
    );
    for bad in ["", "25-17", "a-b=c", "-5=3", "25=8", "25-=8"] {
        assert_eq!(parse_step(bad), None, "{bad}");
    }
}

#[test]
fn state_stats_check_the_numbers_left_after_each_step() {
    let text = "Current State: 27:[6, 4, 7, 3], Operations: []\n\
        Exploring Operation: 4+3=7, Resulting Numbers: [6, 7, 7]\n\
        Exploring Operation: 4+3=7, Resulting Numbers: [7, 4, 7]\n\
        Exploring Operation: 6-2=4, Resulting Numbers: [4, 7, 3, 4]\n\
        Exploring Operation: 7-4=3, Resulting Numbers: [6, 3, 3]\n\
        Current State: 27:[6, 3, 6], Operations: ['7-4=3']\n\
        Exploring Operation: 6+3=9, Resulting Numbers: [3, 6, 9]\n\
        Exploring Operation: 3+6=9, Resulting Numbers: [6, 9]\n";
    // Right: the first, the fourth and the last. Wrong: a misordered
    // list, an operand not in the state, and an operand left in.
    let s = state_stats(text);
    assert_eq!((s.lines, s.correct), (6, 3));
    // With a repeated number, either position may be the operand.
    let either = "Current State: 27:[6, 4, 6, 3], Operations: []\n\
        Exploring Operation: 6+3=9, Resulting Numbers: [4, 6, 9]\n\
        Exploring Operation: 6+3=9, Resulting Numbers: [6, 4, 9]\n\
        Exploring Operation: 6+3=9, Resulting Numbers: [4, 9, 6]\n";
    let s = state_stats(either);
    assert_eq!((s.lines, s.correct), (3, 2));
    // A step before any state line is not counted.
    assert_eq!(
        state_stats("Exploring Operation: 1+1=2, Resulting Numbers: [2]").lines,
        0
    );
    // The real APR example keeps its books.
    let s = state_stats(APR_FINAL);
    assert!(s.lines > 0);
    assert_eq!(s.lines, s.correct);
}

/// An exploration is legal when its arithmetic is right and it keeps the
/// state's books; every way of going wrong is caught.
#[test]
fn legal_exploration_needs_right_arithmetic_and_books() {
    let nums = [20, 22, 27];
    assert!(legal_exploration(
        &nums,
        "20+27=47, Resulting Numbers: [22, 47]"
    ));
    assert!(legal_exploration(
        &nums,
        "27-22=5, Resulting Numbers: [20, 5]"
    ));
    for bad in [
        "24-20=4, Resulting Numbers: [27, 4]", // 24 is not in the state
        "20+27=46, Resulting Numbers: [22, 46]", // wrong arithmetic
        "20+27=47, Resulting Numbers: [24, 47]", // wrong books
        "20+27=47, Resulting Numbers: [47, 22]", // out of order
        "20+27=47, Resulting Numbers: [22, 47", // unreadable
        "20+27=47",
        "",
        "20+20=40, Resulting Numbers: [22, 27, 40]", // 20 used twice
    ] {
        assert!(!legal_exploration(&nums, bad), "{bad}");
    }
    // A repeated number may be used twice.
    assert!(legal_exploration(
        &[35, 35, 13],
        "35/35=1, Resulting Numbers: [13, 1]"
    ));
}
