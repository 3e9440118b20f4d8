//! Cases from the real APR trace in `shared/reference/countdown/apr_trace_example.txt`.

use super::*;

const PARENT_FORK: &str = "Moving to Node #0
Current State: 63:[17, 62, 25, 7], Operations: []
Exploring Operation: 17-7=10, Resulting Numbers: [62, 25, 10]
Generated Node #0,0: 63:[62, 25, 10] Operation: 17-7=10
Exploring Operation: 25-17=8, Resulting Numbers: [62, 7, 8]
Generated Node #0,1: 63:[62, 7, 8] Operation: 25-17=8
Moving to Node #0,1
Current State: 63:[62, 7, 8], Operations: ['25-17=8']
Exploring Operation: 62+7=69, Resulting Numbers: [8, 69]
Generated Node #0,1,0: 63:[8, 69] Operation: 62+7=69
Exploring Operation: 8-7=1, Resulting Numbers: [62, 1]
Generated Node #0,1,1: 63:[62, 1] Operation: 8-7=1
<Calling Sub Searches>
<Start Sub Search 0 at level 1> Moving to Node #0,1,1
<Start Sub Search 1 at level 1> Moving to Node #0,1,0
<End Calling Sub Searches>
";

const CHILD_0: &str = "Moving to Node #0,1,1
Current State: 63:[62, 1], Operations: ['25-17=8', '8-7=1']
Exploring Operation: 62+1=63, Resulting Numbers: [63]
63,63 equal: Goal Reached
Moving to Node #0,1,1
Current State: 63:[62, 1], Operations: ['25-17=8', '8-7=1']
Exploring Operation: 62+1=63, Resulting Numbers: [63]
63,63 equal: Goal Reached
";

const CHILD_1: &str = "Moving to Node #0,1,0
Current State: 63:[8, 69], Operations: ['25-17=8', '62+7=69']
Exploring Operation: 69-8=61, Resulting Numbers: [61]
61,63 unequal: No Solution
Exploring Operation: 8+69=77, Resulting Numbers: [77]
77,63 unequal: No Solution
No solution found.
";

/// `main_call 1` of the example, up to where the parent decodes on.
const JOINED: &str = "Moving to Node #0
Current State: 63:[17, 62, 25, 7], Operations: []
Exploring Operation: 17-7=10, Resulting Numbers: [62, 25, 10]
Generated Node #0,0: 63:[62, 25, 10] Operation: 17-7=10
Exploring Operation: 25-17=8, Resulting Numbers: [62, 7, 8]
Generated Node #0,1: 63:[62, 7, 8] Operation: 25-17=8
Moving to Node #0,1
Current State: 63:[62, 7, 8], Operations: ['25-17=8']
Exploring Operation: 62+7=69, Resulting Numbers: [8, 69]
Generated Node #0,1,0: 63:[8, 69] Operation: 62+7=69
Exploring Operation: 8-7=1, Resulting Numbers: [62, 1]
Generated Node #0,1,1: 63:[62, 1] Operation: 8-7=1
<Sub Searches>
<Goal Reached in Sub Search 0 at level 1 at Node #0,1,1>
Moving to Node #0,1,1
Current State: 63:[62, 1], Operations: ['25-17=8', '8-7=1']
Exploring Operation: 62+1=63, Resulting Numbers: [63]
63,63 equal: Goal Reached
<No Solution in Sub Search 1 at level 1 at Node #0,1,0>
<End Sub Searches>
";

#[test]
fn root_prompt_matches_reference() {
    assert_eq!(
        root_prompt(63, &[17, 62, 25, 7], None),
        "Moving to Node #0\nCurrent State: 63:[17, 62, 25, 7], Operations: []"
    );
    assert_eq!(
        root_prompt(63, &[17, 62, 25, 7], Some(Conditioning::SubCallBudget(2))),
        "Sub Call Budget: 2 Moving to Node #0\nCurrent State: 63:[17, 62, 25, 7], Operations: []"
    );
    assert_eq!(
        sosp_prompt(23, &[92, 2, 58, 6], Some(512)),
        "Token Budget: 512 Current State: 23:[92, 2, 58, 6], Operations: []"
    );
    assert!(PARENT_FORK.starts_with(&root_prompt(63, &[17, 62, 25, 7], None)));
}

#[test]
fn fork_gives_the_children_prompts_of_the_example() {
    assert!(ends_with_fork(PARENT_FORK));
    assert!(ends_with_fork(PARENT_FORK.trim_end()));
    let specs = parse_fork(PARENT_FORK).unwrap();
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[0].node_id, "0,1,1");
    assert_eq!(specs[0].operations, vec!["25-17=8", "8-7=1"]);
    assert_eq!(specs[1].nums, vec![8, 69]);
    for (spec, child) in specs.iter().zip([CHILD_0, CHILD_1]) {
        let prompt = spec.prompt(None);
        assert!(child.starts_with(&format!("{prompt}\n")), "{prompt}");
    }
    assert_eq!(
        specs[1].prompt(Some(Conditioning::TokenBudget(1024))),
        format!("Token Budget: 1024 {}", specs[1].prompt(None))
    );
    assert_eq!(
        specs[1].prompt(Some(Conditioning::SubCallBudget(3))),
        specs[1].prompt(None)
    );
}

#[test]
fn child_results_follow_the_second_to_last_goal() {
    assert_eq!(
        child_result(CHILD_0),
        Some(
            "Moving to Node #0,1,1\nCurrent State: 63:[62, 1], Operations: ['25-17=8', '8-7=1']\n\
             Exploring Operation: 62+1=63, Resulting Numbers: [63]\n63,63 equal: Goal Reached"
        )
    );
    assert_eq!(child_result(CHILD_1), None);
    assert_eq!(child_result("63,63 equal: Goal Reached\n"), None);
    // Python: "Goal Reached Goal Reached".strip()[13:] == "Goal Reached"
    assert_eq!(
        child_result("Goal Reached Goal Reached"),
        Some("Goal Reached")
    );
    assert_eq!(
        child_result("Goal ReachedGoal Reached"),
        Some("oal Reached")
    );
}

#[test]
fn join_is_byte_identical_to_the_example() {
    let results = [child_result(CHILD_0), child_result(CHILD_1)];
    assert_eq!(join(PARENT_FORK, &results).unwrap(), JOINED);
    // Inference text usually stops right after the close tag.
    assert_eq!(join(PARENT_FORK.trim_end(), &results).unwrap(), JOINED);
}

#[test]
fn bad_input_gives_errors_not_panics() {
    assert!(matches!(
        parse_fork("Moving to Node #0\n"),
        Err(ProtocolError::NoFork { .. })
    ));
    assert!(matches!(
        join(PARENT_FORK, &[None]),
        Err(ProtocolError::ChildCount {
            expected: 2,
            got: 1
        })
    ));
    let unknown = PARENT_FORK.replace("Moving to Node #0,1,0\n<End", "Moving to Node #0,9\n<End");
    assert!(matches!(
        parse_fork(&unknown),
        Err(ProtocolError::UnknownNode { .. })
    ));
    let garbled = "<Calling Sub Searches>\n<Start Sub Search x at level 1> Moving to Node #0\n<End Calling Sub Searches>";
    assert!(matches!(
        parse_fork(garbled),
        Err(ProtocolError::Malformed { .. })
    ));
    assert!(parse_fork("<Calling Sub Searches>\n<End Calling Sub Searches>").is_err());
    // Arbitrary text never panics.
    for text in [
        "",
        "Goal Reached",
        "Generated Node #:",
        "Moving to Node #\nCurrent State:",
        "é<Calling Sub Searches>\n<End Calling Sub Searches>",
    ] {
        let _ = parse_fork(text);
        let _ = child_result(text);
        let _ = join(text, &[]);
    }
}

#[test]
fn list_parsers_round_trip() {
    assert_eq!(parse_nums("[]"), Some(vec![]));
    assert_eq!(parse_nums("[1, 22]"), Some(vec![1, 22]));
    assert_eq!(parse_nums("[1, x]"), None);
    assert_eq!(parse_target_nums("63:[62, 1]"), Some((63, vec![62, 1])));
    assert_eq!(parse_str_list("[]"), Some(vec![]));
    assert_eq!(
        parse_str_list("['25-17=8', '8-7=1']"),
        Some(vec!["25-17=8".to_string(), "8-7=1".to_string()])
    );
    assert_eq!(parse_str_list("['a' 'b']"), None);
    assert_eq!(parse_str_list("['a"), None);
}

#[test]
fn duplicate_children_are_siblings_from_one_state() {
    let child = |nums: &[u64], ops: &[&str]| {
        ChildSpec {
            index: 0,
            level: 1,
            node_id: "0,1".into(),
            target: 24,
            nums: nums.to_vec(),
            operations: ops.iter().map(|s| s.to_string()).collect(),
        }
        .prompt(None)
    };
    let a = child(&[9, 20], &["24-15=9"]);
    let b = child(&[20, 9], &["15-24=9"]); // the same numbers, another order
    let c = child(&[39, 20], &["24+15=39"]);
    assert_eq!(prompt_state(&a), Some((24, vec![9, 20])));
    assert_eq!(prompt_state(&a), prompt_state(&b));
    // Siblings repeat; the same state under another parent does not.
    let kids = [
        (0, a.as_str()),
        (0, b.as_str()),
        (0, c.as_str()),
        (1, a.as_str()),
        (0, a.as_str()),
    ];
    assert_eq!(duplicate_children(kids), 2);
    assert_eq!(
        duplicate_children([(0, "no state here"), (0, "no state here")]),
        0
    );
}

/// A root that explores the numbers of #0,0 again (as #0,2), calls both,
/// and after the join explores 9+4=13 again at #0.
const REPEATING: &str = "Moving to Node #0
Current State: 24:[15, 9, 20, 4], Operations: []
Exploring Operation: 24-15=9, Resulting Numbers: [9, 20, 4]
Generated Node #0,0: 24:[9, 20, 4] Operation: 15-9=6
Exploring Operation: 9+4=13, Resulting Numbers: [15, 20, 13]
Generated Node #0,1: 24:[15, 20, 13] Operation: 9+4=13
Exploring Operation: 20-9=11, Resulting Numbers: [4, 20, 9]
Generated Node #0,2: 24:[4, 20, 9] Operation: 20-9=11
<Calling Sub Searches>
<Start Sub Search 0 at level 1> Moving to Node #0,0
<Start Sub Search 1 at level 1> Moving to Node #0,1
<Start Sub Search 2 at level 1> Moving to Node #0,2
<End Calling Sub Searches>
<Sub Searches>
<No Solution in Sub Search 0 at level 1 at Node #0,0>
Moving to Node #0,1
Current State: 24:[15, 20, 13], Operations: ['9+4=13']
Exploring Operation: 9+4=13, Resulting Numbers: [15, 20, 13]
<End Sub Searches>
Moving to Node #0
Current State: 24:[15, 9, 20, 4], Operations: []
Exploring Operation: 9+4=13, Resulting Numbers: [15, 20, 13]
Exploring Operation: 15+9=24, Resulting Numbers: [24, 20, 4]
";

/// The reference trace's first fork never repeats itself; the same root
/// with one exploration repeated (another operation, the same numbers),
/// one repeated verbatim at a node revisited later, and a sub-search
/// called twice for one state, gives exactly those lines.
#[test]
fn repeated_search_spans_are_the_lines_that_repeat_a_state() {
    assert!(repeated_search_spans(PARENT_FORK).is_empty());
    let text = REPEATING;
    let spans: Vec<&str> = repeated_search_spans(text)
        .into_iter()
        .map(|r| &text[r])
        .collect();
    assert_eq!(
        spans,
        [
            // Another operation, the numbers of #0,0 (as a multiset).
            "Exploring Operation: 20-9=11, Resulting Numbers: [4, 20, 9]\n\
             Generated Node #0,2: 24:[4, 20, 9] Operation: 20-9=11\n",
            // #0,2 is the state of #0,0, called already.
            "<Start Sub Search 2 at level 1> Moving to Node #0,2\n",
            // Back at #0 after the join: 9+4=13 again. (The child result's
            // lines, inside <Sub Searches>, belong to its own node #0,1,
            // where nothing repeats.)
            "Exploring Operation: 9+4=13, Resulting Numbers: [15, 20, 13]\n",
        ]
    );
}

/// Every exploration and call line is a [`SearchLine`], grouped by its node
/// or calling block, and the zero-sum weights of each group add up to 0.
#[test]
fn search_lines_group_the_alternatives_and_weights_sum_to_zero() {
    let text = REPEATING;
    let lines = search_lines(text);
    let got: Vec<(&str, usize, bool)> = lines
        .iter()
        .map(|l| {
            (
                text[l.span.clone()].split('\n').next().unwrap(),
                l.group,
                l.repeated,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "Exploring Operation: 24-15=9, Resulting Numbers: [9, 20, 4]",
                0,
                false
            ),
            (
                "Exploring Operation: 9+4=13, Resulting Numbers: [15, 20, 13]",
                0,
                false
            ),
            (
                "Exploring Operation: 20-9=11, Resulting Numbers: [4, 20, 9]",
                0,
                true
            ),
            (
                "<Start Sub Search 0 at level 1> Moving to Node #0,0",
                1,
                false
            ),
            (
                "<Start Sub Search 1 at level 1> Moving to Node #0,1",
                1,
                false
            ),
            (
                "<Start Sub Search 2 at level 1> Moving to Node #0,2",
                1,
                true
            ),
            // Node #0,1 (the child's result inside the join): its own group.
            (
                "Exploring Operation: 9+4=13, Resulting Numbers: [15, 20, 13]",
                2,
                false
            ),
            // Back at #0: the group of its first visit.
            (
                "Exploring Operation: 9+4=13, Resulting Numbers: [15, 20, 13]",
                0,
                true
            ),
            (
                "Exploring Operation: 15+9=24, Resulting Numbers: [24, 20, 4]",
                0,
                false
            ),
        ]
    );
    let choices: Vec<&str> = lines.iter().map(|l| &text[l.choice.clone()]).collect();
    assert_eq!(
        choices,
        [
            "24-15=9", "9+4=13", "20-9=11", "0,0\n", "0,1\n", "0,2\n", "9+4=13", "9+4=13",
            "15+9=24"
        ]
    );
    assert!(lines
        .iter()
        .all(|l| l.span.start <= l.choice.start && l.choice.end <= l.span.end));
    // Exploration lines cover their `Generated Node` line.
    assert!(text[lines[0].span.clone()].ends_with("Operation: 15-9=6\n"));
    let w = zero_sum_weights(&lines);
    // #0: 5 lines, 2 repeats: the other 3 get 2/3 each.
    let third = 2.0 / 3.0;
    assert_eq!(w, [third, third, -1.0, 0.5, 0.5, -1.0, 0.0, -1.0, third]);
    for g in 0..3 {
        let sum: f32 = lines
            .iter()
            .zip(&w)
            .filter(|(l, _)| l.group == g)
            .map(|(_, w)| w)
            .sum();
        assert!(sum.abs() < 1e-6, "group {g} sums to {sum}");
    }
    // No repeats, no weights; and repeated_search_spans is the marked lines.
    assert!(zero_sum_weights(&search_lines(PARENT_FORK))
        .iter()
        .all(|&w| w == 0.0));
    let marked: Vec<_> = lines
        .iter()
        .filter(|l| l.repeated)
        .map(|l| l.span.clone())
        .collect();
    assert_eq!(marked, repeated_search_spans(text));
}

/// Lines that cannot be followed weigh like repeats: a call of a node the
/// text never generated (the engine refuses that fork) and an exploration
/// whose numbers do not parse.
#[test]
fn calls_of_unknown_nodes_and_unreadable_explorations_are_invalid() {
    let text = "Moving to Node #0
Current State: 14:[35, 35, 13], Operations: []
Exploring Operation: 35+13=48, Resulting Numbers: [35, 48]
Generated Node #0,0: 14:[35, 48] Operation: 35+13=48
Exploring Operation: 35-13=22, Resulting Numbers: [35, 22
<Calling Sub Searches>
<Start Sub Search 0 at level 1> Moving to Node #0,0
<Start Sub Search 1 at level 1> Moving to Node #0,54
<Start Sub Search 2 at level 1> Moving to Node #0,30/1=52']
<End Calling Sub Searches>
";
    let lines = search_lines(text);
    let got: Vec<(&str, bool, bool)> = lines
        .iter()
        .map(|l| (&text[l.choice.clone()], l.repeated, l.invalid))
        .collect();
    assert_eq!(
        got,
        [
            ("35+13=48", false, false),
            ("35-13=22", false, true),
            ("0,0\n", false, false),
            ("0,54\n", false, true),
            ("0,30/1=52']\n", false, true),
        ]
    );
    assert!(repeated_search_spans(text).is_empty());
    assert_eq!(zero_sum_weights(&lines), [1.0, -1.0, 2.0, -1.0, -1.0]);
}

/// With a legality check, explorations it rejects are invalid too, judged
/// against the latest `Current State` of their node.
#[test]
fn search_lines_checked_marks_illegal_explorations() {
    let text = "Moving to Node #0
Current State: 15:[20, 22, 27], Operations: []
Exploring Operation: 20+27=47, Resulting Numbers: [22, 47]
Generated Node #0,0: 15:[22, 47] Operation: 20+27=47
Exploring Operation: 24-20=4, Resulting Numbers: [27, 4]
Generated Node #0,1: 15:[27, 4] Operation: 24-20=4
";
    let seen = std::cell::RefCell::new(Vec::new());
    let legal = |nums: &[u64], rest: &str| {
        seen.borrow_mut().push(nums.to_vec());
        !rest.starts_with("24")
    };
    let lines = search_lines_checked(text, &legal);
    let invalid: Vec<bool> = lines.iter().map(|l| l.invalid).collect();
    assert_eq!(invalid, [false, true]);
    assert_eq!(*seen.borrow(), [vec![20, 22, 27], vec![20, 22, 27]]);
    assert!(search_lines(text).iter().all(|l| !l.invalid));
}

proptest::proptest! {
    /// On any text, the weights of every group add up to 0 (or are all -1),
    /// and nothing panics.
    #[test]
    fn zero_sum_weights_balance_on_any_text(
        lines in proptest::collection::vec(
            proptest::sample::select(vec![
                "Moving to Node #0",
                "Moving to Node #0,1",
                "Exploring Operation: 9+4=13, Resulting Numbers: [15, 20, 13]",
                "Exploring Operation: 20-9=11, Resulting Numbers: [4, 20, 9]",
                "Exploring Operation: 24-15=9, Resulting Numbers: [9, 20, 4]",
                "Exploring Operation: 1+1=2, Resulting Numbers: [",
                "Generated Node #0,0: 24:[9, 20, 4] Operation: 15-9=6",
                "Generated Node #0,1: 24:[4, 9, 20] Operation: 20-9=11",
                "Generated Node #0,2: 24:[15, 20, 13] Operation: 9+4=13",
                "<Calling Sub Searches>",
                "<Start Sub Search 0 at level 1> Moving to Node #0,0",
                "<Start Sub Search 1 at level 1> Moving to Node #0,1",
                "<Start Sub Search 2 at level 1> Moving to Node #0,2",
                "<End Calling Sub Searches>",
                "<Sub Searches>",
            ]),
            0..40,
        )
    ) {
        let text = lines.join("\n");
        let lines = search_lines(&text);
        for l in &lines {
            proptest::prop_assert!(l.span.start <= l.choice.start && l.choice.end <= l.span.end);
        }
        let w = zero_sum_weights(&lines);
        let groups = lines.iter().map(|l| l.group + 1).max().unwrap_or(0);
        for g in 0..groups {
            let ws: Vec<f32> = lines.iter().zip(&w).filter(|(l, _)| l.group == g).map(|(_, &w)| w).collect();
            let sum: f32 = ws.iter().sum();
            proptest::prop_assert!(sum.abs() < 1e-4 || ws.iter().all(|&w| w == -1.0), "group {} weights {:?}", g, ws);
        }
    }
}

/// The text the collapsed RL runs escaped into (MODEL.md, failed
/// settings) and each other way a line can break the grammar is caught;
/// a whole parent with its calls, join and answer is not.
#[test]
fn malformed_lines_catch_every_kind_of_broken_line() {
    let good = "Moving to Node #0
Current State: 94:[34, 39, 21], Operations: []
Exploring Operation: 39+21=60, Resulting Numbers: [34, 60]
Generated Node #0,0: 94:[34, 60] Operation: 39+21=60
Exploring Operation: 34+21=55, Resulting Numbers: [39, 55]
Generated Node #0,1: 94:[39, 55] Operation: 34+21=55
<Calling Sub Searches>
<Start Sub Search 0 at level 1> Moving to Node #0,1
<Start Sub Search 1 at level 1> Moving to Node #0,0
<End Calling Sub Searches>
<Sub Searches>
<Goal Reached in Sub Search 0 at level 1 at Node #0,1>
Moving to Node #0,1
Current State: 94:[39, 55], Operations: ['34+21=55']
Exploring Operation: 39+55=94, Resulting Numbers: [94]
94,94 equal: Goal Reached
<No Solution in Sub Search 1 at level 1 at Node #0,0>
<End Sub Searches>
94,94 equal: Goal Reached
Moving to Node #0
Current State: 94:[34, 39, 21], Operations: []
Exploring Operation: 34+21=55, Resulting Numbers: [39, 55]
Generated Node #0,1: 94:[39, 55] Operation: 34+21=55
Moving to Node #0,1
Current State: 94:[39, 55], Operations: ['34+21=55']
Exploring Operation: 39+55=94, Resulting Numbers: [94]
94,94 equal: Goal Reached
";
    assert!(malformed_lines(good).is_empty());
    // The answer path (the child's echo after `<Goal Reached in Sub
    // Search`, the parent's own after `equal: Goal Reached`) writes #0's
    // exploration and #0,1's again: not search, so no repeat.
    let lines = search_lines(good);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines.iter().all(|l| !l.repeated && !l.invalid), "{lines:?}");
    let child = "Sub Call Budget: 3 Moving to Node #0,1
Current State: 94:[39, 13], Operations: ['34-21=13']
Exploring Operation: 39+13=52, Resulting Numbers: [52]
52,94 unequal: No Solution
No solution found.
";
    assert!(malformed_lines(child).is_empty());
    let head = "Moving to Node #0,1\nCurrent State: 81:[9, 9], Operations: ['3*3=9']\n";
    for (bad, why) in [
        (
            "Current State: 81: 81: 81]\n",
            "a state that does not parse",
        ),
        (
            "Current State: 81:[9, 9], Operations: ['3*3']\n",
            "an operation without result",
        ),
        (
            "Exploring Operation: 9*9=81, Resulting Numbers: \n",
            "no numbers",
        ),
        (
            "Exploring Operation: 9*9, Resulting Numbers: [81]\n",
            "no result",
        ),
        (
            "81,81 equal: Goal Reached\nNo solution found.\n81,81 equal: Goal Reached\n",
            "after the end",
        ),
        ("Goal Reached\n", "a bare verdict"),
        (
            "80,81 equal: Goal Reached\n",
            "a verdict against its numbers",
        ),
        (
            "81,81 unequal: No Solution\n",
            "a verdict against its numbers",
        ),
        (
            "Generated Node #0,1,0: 81:[81] Operation: 9*9=81\n",
            "a node without exploration",
        ),
        ("Moving to Node #0,\n", "a cut node id"),
        (
            "Moving to Node #0,1\nExploring Operation: 9*9=81, Resulting Numbers: [81]\n",
            "no state",
        ),
        (
            "<Start Sub Search 0 at level 1> Moving to Node #0,1,0\n",
            "a call outside a block",
        ),
        (
            "<Calling Sub Searches>\n<Start Sub Search 0 at level> Moving to Node #0\n",
            "a broken call",
        ),
        (
            "<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,\n",
            "a cut call",
        ),
        ("<End Calling Sub Searches>\n", "a block never opened"),
        ("\n", "an empty line"),
        ("Token Budget: x Moving to Node #0\n", "a broken prefix"),
    ] {
        let text = format!("{head}{bad}");
        let got = malformed_lines(&text);
        let last = text[..text.len() - 1].rfind('\n').map_or(0, |i| i + 1);
        assert_eq!(
            got.last().map(|s| s.start),
            Some(last),
            "{why}: {bad:?} -> {got:?}"
        );
        assert!(
            got.iter().all(|s| s.start >= head.len()),
            "{why}: the head is fine"
        );
    }
    // A last line without its newline may have been cut: not judged.
    assert!(malformed_lines("Moving to Node #0\nCurrent State: 8").is_empty());
}

proptest::proptest! {
    /// On any text: no panic, and each range is one whole line with its
    /// `\n`.
    #[test]
    fn malformed_lines_are_whole_lines_of_any_text(text in "(?s).{0,300}") {
        for s in malformed_lines(&text) {
            proptest::prop_assert!(s.start == 0 || text.as_bytes()[s.start - 1] == b'\n');
            proptest::prop_assert!(text[s.clone()].ends_with('\n'));
            proptest::prop_assert_eq!(text[s].matches('\n').count(), 1);
        }
    }
}
