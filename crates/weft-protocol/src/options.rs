//! Per-request protocol options: every setting a reference implementation
//! exposes, by its name there, as `key=value` text (what `weft run
//! --protocol-option` and the server's `parallel.options` pass).
//!
//! | protocol | key | meaning (default) |
//! |---|---|---|
//! | threadweaver | `no_conclusion` | join with `\n`, not `\n<Conclusion>\n` (true, as released) |
//! | threadweaver | `max_iterations` | the reference's cap: iterations, two per fork (32) |
//! | threadweaver | `max_fork_rounds` | forks per request (16) |
//! | parallel-r1 | `num_paths` | paths per block (2) |
//! | parallel-r1 | `max_iterations_for_parallel_thinking` | blocks per request (4) |
//! | multiverse, npr, apr | `max_depth` | threads below this depth fork (6, 6, 1) |
//! | multiverse, npr | `max_children` | children per fork (none; npr 5, more end the thread) |
//! | npr | `repetition_penalty` | the children's (1.02) |
//! | multiverse, npr | `fork_budget_margin` | no fork once the thread's position past the prompt is at least `max_tokens` minus this (30, 1024); `none` turns it off |
//! | apr | `max_fork_rounds` | forks per request (none) |

use crate::{apr, multiverse, npr, parallel_r1, threadweaver, Protocol, NAMES};

/// Why options could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("unknown protocol `{0}` (apr, multiverse, threadweaver, npr, parallel-r1)")]
    UnknownProtocol(String),
    #[error("protocol `{protocol}` has no option `{key}` (it has: {known})")]
    UnknownKey {
        protocol: String,
        key: String,
        known: &'static str,
    },
    #[error("option `{key}`: {value:?} is not {expected}")]
    BadValue {
        key: String,
        value: String,
        expected: &'static str,
    },
}

fn parse<T: std::str::FromStr>(
    key: &str,
    value: &str,
    expected: &'static str,
    ok: impl Fn(&T) -> bool,
) -> Result<T, OptionError> {
    value
        .trim()
        .parse::<T>()
        .ok()
        .filter(|v| ok(v))
        .ok_or_else(|| OptionError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            expected,
        })
}

fn unknown(protocol: &str, key: &str, known: &'static str) -> OptionError {
    OptionError::UnknownKey {
        protocol: protocol.to_string(),
        key: key.to_string(),
        known,
    }
}

/// The protocol `name` with the reference's settings changed by `options`
/// (`key`, `value` pairs; later pairs win). Errors: an unknown protocol or
/// key, or a value that does not parse or is out of range.
pub fn with_options(
    name: &str,
    options: &[(String, String)],
) -> Result<Box<dyn Protocol>, OptionError> {
    if !NAMES.contains(&name) {
        return Err(OptionError::UnknownProtocol(name.to_string()));
    }
    let positive = |v: &u32| *v >= 1;
    let any_u32 = |_: &u32| true;
    // A token count, or `none` (the guard off).
    let margin = |k: &str, v: &str| -> Result<Option<usize>, OptionError> {
        if v.trim() == "none" {
            return Ok(None);
        }
        parse(k, v, "an integer >= 0 or `none`", |_: &usize| true).map(Some)
    };
    Ok(match name {
        "threadweaver" => {
            let mut p = threadweaver::ThreadWeaver::default();
            for (k, v) in options {
                match k.as_str() {
                    "no_conclusion" => p.no_conclusion = parse(k, v, "true or false", |_| true)?,
                    "max_fork_rounds" => {
                        p.max_fork_rounds = parse(k, v, "an integer >= 1", positive)?
                    }
                    // The reference's own cap: controller iterations, a
                    // fork and its join taking two (32 allow 16 forks).
                    "max_iterations" => {
                        let n: u32 = parse(k, v, "an integer >= 2", |n: &u32| *n >= 2)?;
                        p.max_fork_rounds = n / 2;
                    }
                    _ => {
                        return Err(unknown(
                            name,
                            k,
                            "no_conclusion, max_iterations, max_fork_rounds",
                        ))
                    }
                }
            }
            Box::new(p)
        }
        "parallel-r1" => {
            let mut p = parallel_r1::ParallelR1::default();
            for (k, v) in options {
                match k.as_str() {
                    "num_paths" => {
                        p.num_paths = parse(k, v, "an integer from 1 to 64", |n: &usize| {
                            (1..=64).contains(n)
                        })?
                    }
                    "max_iterations_for_parallel_thinking" | "max_blocks" => {
                        p.max_blocks = parse(k, v, "an integer >= 1", positive)?
                    }
                    _ => {
                        return Err(unknown(
                            name,
                            k,
                            "num_paths, max_iterations_for_parallel_thinking",
                        ))
                    }
                }
            }
            Box::new(p)
        }
        "multiverse" => {
            let mut p = multiverse::Multiverse::default();
            for (k, v) in options {
                match k.as_str() {
                    "max_depth" => p.max_depth = parse(k, v, "an integer >= 0", any_u32)?,
                    "max_children" => {
                        p.max_children = Some(parse(k, v, "an integer >= 1", |n: &usize| *n >= 1)?)
                    }
                    "fork_budget_margin" => p.fork_budget_margin = margin(k, v)?,
                    _ => {
                        return Err(unknown(
                            name,
                            k,
                            "max_depth, max_children, fork_budget_margin",
                        ))
                    }
                }
            }
            Box::new(p)
        }
        "npr" => {
            let mut p = npr::Npr::default();
            for (k, v) in options {
                match k.as_str() {
                    "max_depth" => p.max_depth = parse(k, v, "an integer >= 0", any_u32)?,
                    "max_children" => {
                        p.max_children = Some(parse(k, v, "an integer >= 1", |n: &usize| *n >= 1)?)
                    }
                    "repetition_penalty" => {
                        p.repetition_penalty =
                            parse(k, v, "a number > 0", |x: &f32| x.is_finite() && *x > 0.0)?
                    }
                    "fork_budget_margin" => p.fork_budget_margin = margin(k, v)?,
                    _ => {
                        return Err(unknown(
                            name,
                            k,
                            "max_depth, max_children, repetition_penalty, fork_budget_margin",
                        ))
                    }
                }
            }
            Box::new(p)
        }
        _ => {
            let mut p = apr::Apr::default();
            for (k, v) in options {
                match k.as_str() {
                    "max_depth" => p.max_depth = parse(k, v, "an integer >= 0", any_u32)?,
                    "max_fork_rounds" => {
                        p.max_fork_rounds = Some(parse(k, v, "an integer >= 1", positive)?)
                    }
                    _ => return Err(unknown(name, k, "max_depth, max_fork_rounds")),
                }
            }
            Box::new(p)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AfterJoin, ChildEnd, Detector, ForkContext, Scan};

    fn kv(k: &str, v: &str) -> Vec<(String, String)> {
        vec![(k.to_string(), v.to_string())]
    }

    #[test]
    fn threadweaver_can_join_with_a_conclusion_again() {
        let text = "<Outlines>\n<Outline>1: a</Outline>\n</Outlines>";
        for (value, tail) in [
            ("true", "</Thread>\n"),
            ("false", "</Thread>\n<Conclusion>\n"),
        ] {
            let tw = with_options("threadweaver", &kv("no_conclusion", value)).unwrap();
            let Scan::Fork(fork) =
                Detector::for_prompt(0).scan(tw.as_ref(), text, ForkContext::default())
            else {
                panic!("no fork")
            };
            let r = [tw.child_result(" x</Thread>", ChildEnd::Stop)];
            let join = tw.join(text, &fork, &r, ForkContext::default()).unwrap();
            assert!(join.text.ends_with(tail), "{:?}", join.text);
            assert_eq!(join.then, AfterJoin::Continue);
        }
    }

    #[test]
    fn options_reach_the_rules() {
        let p = with_options("parallel-r1", &kv("num_paths", "3")).unwrap();
        assert_eq!(p.rules().fixed_children, Some(3));
        let p = with_options("npr", &kv("repetition_penalty", "1.1")).unwrap();
        assert_eq!(p.rules().child_repetition_penalty, Some(1.1));
        let p = with_options("multiverse", &kv("max_depth", "2")).unwrap();
        assert_eq!(p.rules().max_depth, 2);
        assert_eq!(with_options("npr", &[]).unwrap().rules().max_depth, 6);
        // The engines' token-budget guards, and their per-request override.
        assert_eq!(
            with_options("multiverse", &[])
                .unwrap()
                .rules()
                .fork_budget_margin,
            Some(30)
        );
        assert_eq!(
            with_options("npr", &[]).unwrap().rules().fork_budget_margin,
            Some(1024)
        );
        let p = with_options("npr", &kv("fork_budget_margin", "64")).unwrap();
        assert_eq!(p.rules().fork_budget_margin, Some(64));
        let p = with_options("multiverse", &kv("fork_budget_margin", "none")).unwrap();
        assert_eq!(p.rules().fork_budget_margin, None);
        let e = with_options("multiverse", &kv("fork_budget_margin", "-1")).err();
        assert!(matches!(e, Some(OptionError::BadValue { .. })), "{e:?}");
    }

    /// Multiverse-Engine refuses a fork once `right_most_pos -
    /// init_input_len >= max_new_tokens - 30` and decodes on; with the
    /// option changed, the boundary moves with it.
    #[test]
    fn forks_need_budget_left() {
        let text = "<Parallel>\n<Goal>\n<Outline>\n1: a\n</Outline>\n</Goal>";
        let scan = |p: &dyn crate::Protocol, position: usize, max: Option<usize>| {
            let ctx = ForkContext {
                position,
                max_new_tokens: max,
                ..ForkContext::default()
            };
            Detector::for_prompt(0).scan(p, text, ctx)
        };
        let mv = with_options("multiverse", &[]).unwrap();
        assert!(matches!(scan(mv.as_ref(), 69, Some(100)), Scan::Fork(_)));
        let Scan::Refuse(r) = scan(mv.as_ref(), 70, Some(100)) else {
            panic!("forked at 70 of 100")
        };
        assert_eq!(r.action, crate::Action::Sequential);
        assert_eq!(
            r.reason,
            crate::RefuseReason::TokenBudget {
                position: 70,
                max_new_tokens: 100,
                margin: 30
            }
        );
        // A budget below the margin forbids every fork (Python's negative
        // right-hand side); no budget, no guard.
        assert!(matches!(scan(mv.as_ref(), 0, Some(20)), Scan::Refuse(_)));
        assert!(matches!(scan(mv.as_ref(), 10_000, None), Scan::Fork(_)));
        let mv = with_options("multiverse", &kv("fork_budget_margin", "5")).unwrap();
        assert!(matches!(scan(mv.as_ref(), 94, Some(100)), Scan::Fork(_)));
        assert!(matches!(scan(mv.as_ref(), 95, Some(100)), Scan::Refuse(_)));
        let mv = with_options("multiverse", &kv("fork_budget_margin", "none")).unwrap();
        assert!(matches!(scan(mv.as_ref(), 99, Some(100)), Scan::Fork(_)));
    }

    #[test]
    fn bad_options_are_named() {
        let e = with_options("threadweaver", &kv("no_conclusoin", "true")).err();
        assert!(
            matches!(&e, Some(OptionError::UnknownKey { key, .. }) if key == "no_conclusoin"),
            "{e:?}"
        );
        let e = with_options("parallel-r1", &kv("num_paths", "0")).err();
        assert!(matches!(e, Some(OptionError::BadValue { .. })), "{e:?}");
        let e = with_options("threadweaver", &kv("no_conclusion", "yes")).err();
        assert!(matches!(e, Some(OptionError::BadValue { .. })), "{e:?}");
        assert!(matches!(
            with_options("tot", &[]).err(),
            Some(OptionError::UnknownProtocol(_))
        ));
    }
}
