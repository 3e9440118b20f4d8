//! Arbitrary and adversarial text never makes a protocol panic: not its
//! detector (whatever the chunking), not its child results, not its join
//! (whatever the parent text, fork and result count it is handed).

use proptest::prelude::*;
use weft_protocol::{
    by_name, Action, ChildEnd, ChildPrompt, ChildResult, ChildSpec, Detector, Fork, ForkContext,
    Scan, NAMES,
};

const PIECES: &[&str] = &[
    "<Calling Sub Searches>\n",
    "<Start Sub Search 0 at level 1> Moving to Node #0,0\n",
    "<End Calling Sub Searches>",
    "<Sub Searches>",
    "Moving to Node #0\n",
    "Current State: 9:[4, 5], Operations: []\n",
    "Generated Node #0,0: 9:[9] Operation: 4+5=9\n",
    "Goal Reached",
    "Token Budget: 3 ",
    "<Parallel>",
    "</Parallel>",
    "<Goal>",
    "</Goal>",
    "<Outline>1:",
    "<Outline>",
    "</Outline>",
    "<Outlines>",
    "</Outlines>",
    "<Path>",
    "</Path>",
    "<Thread>",
    "</Thread>",
    "<guideline>",
    "</guideline>",
    "<plan>2:",
    "<step>",
    "</step>",
    "\n",
    " ",
    "é",
    "𝄞",
    "1.2",
    ":",
];

fn adversarial_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(PIECES).prop_map(str::to_string),
            any::<String>(),
            "[0-9#,:\\[\\] ]{0,8}",
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

fn end_of(i: u8) -> ChildEnd {
    [ChildEnd::Stop, ChildEnd::Eos, ChildEnd::Length][usize::from(i % 3)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn detectors_and_joins_never_panic(
        text in adversarial_text(),
        steps in prop::collection::vec(1usize..16, 1..8),
        depth in 0u32..6,
        rounds in 0u32..20,
        outputs in prop::collection::vec((adversarial_text(), any::<u8>()), 0..4),
        segment_end in any::<usize>(),
    ) {
        let ctx = ForkContext {
            depth,
            rounds,
            ..ForkContext::default()
        };
        for name in NAMES {
            let protocol = by_name(name).unwrap();
            let mut detector = Detector::for_prompt(0);
            let mut fed = 0;
            let mut step = steps.iter().cycle();
            while fed < text.len() {
                fed = (fed + step.next().unwrap()).min(text.len());
                while !text.is_char_boundary(fed) {
                    fed += 1;
                }
                match detector.scan(protocol.as_ref(), &text[..fed], ctx) {
                    Scan::Continue => {}
                    Scan::Fork(fork) => {
                        prop_assert!(fork.segment_end <= fed);
                        prop_assert!(!fork.children.is_empty());
                        let results: Vec<ChildResult> = fork.children.iter().zip(outputs.iter().cycle())
                            .map(|(_, (g, e))| protocol.child_result(g, end_of(*e)))
                            .collect();
                        if results.len() == fork.children.len() {
                            prop_assert!(protocol.join(&text[..fed], &fork, &results, ctx).is_ok());
                        }
                        detector.resume_at(fed);
                    }
                    Scan::Refuse(r) => {
                        if let Action::Rewrite { truncate_to, .. } | Action::Finish { truncate_to } = r.action {
                            prop_assert!(truncate_to <= fed && text.is_char_boundary(truncate_to));
                        }
                    }
                }
            }
            // A join handed a made-up fork: any segment end, any count.
            let children: Vec<ChildSpec> = outputs.iter().enumerate().map(|(index, (g, _))| ChildSpec {
                index,
                label: g.chars().take(3).collect(),
                prompt: ChildPrompt::Continue { suffix: g.clone() },
            }).collect();
            let fork = Fork { segment_end: segment_end % (text.len() + 3), children };
            let results: Vec<ChildResult> = outputs.iter()
                .map(|(g, e)| protocol.child_result(g, end_of(*e)))
                .collect();
            let _ = protocol.join(&text, &fork, &results, ctx);
            let _ = protocol.join(&text, &fork, &results[..results.len() / 2], ctx);
        }
    }
}
