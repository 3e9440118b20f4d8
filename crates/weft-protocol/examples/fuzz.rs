//! Stable-Rust fuzzer for every protocol's detector, child result and join
//! (cargo-fuzz needs nightly). Mutates seeds (the fixtures plus every tag)
//! by tag splices, truncations, duplications, deletions and crossovers,
//! streams each input through a [`Detector`] in random token-sized chunks,
//! runs the fork's children and join, and checks the offsets it gets back.
//!
//! `cargo run --release -p weft-protocol --example fuzz -- --seconds 600 [--seed N]`
//!
//! A panic or a broken invariant prints the input (escaped) and exits 1.
//!
//! Recorded run (2026-11-29, 2 shared cores, `nice -n 19`, seed 20261129):
//! `--seconds 610`: 10,504,704 inputs x 5 protocols, 20,794,744
//! forks/refusals reached, no panic, no broken invariant.

use std::panic;
use std::path::Path;
use std::time::{Duration, Instant};
use weft_protocol::{
    apr, by_name, Action, ChildEnd, Detector, ForkContext, Layout, Protocol, Scan, NAMES,
};

const TAGS: &[&str] = &[
    "<Calling Sub Searches>\n",
    "<Start Sub Search 0 at level 1> Moving to Node #0,1\n",
    "<Start Sub Search 1 at level 1> Moving to Node #0,0\n",
    "<End Calling Sub Searches>",
    "<Sub Searches>\n",
    "<End Sub Searches>\n",
    "Moving to Node #0\n",
    "Current State: 63:[17, 62, 25, 7], Operations: []\n",
    "Generated Node #0,1: 63:[62, 7, 8] Operation: 25-17=8\n",
    "Goal Reached",
    "Token Budget: 12 ",
    "Sub Call Budget: 2 ",
    "<Parallel>",
    "</Parallel>",
    "<Goal>",
    "</Goal>",
    "<Outline>",
    "</Outline>",
    "<Outline>1:",
    "<Outline>1.2:",
    "<Outlines>",
    "</Outlines>",
    "<Path>",
    "</Path>",
    "<Conclusion>",
    "<Thread>",
    "</Thread>",
    "<guideline>",
    "</guideline>",
    "<plan>1:",
    "<plan>",
    "</plan>",
    "<step>",
    "</step>",
    "<takeaway>",
    "<Summary>",
    "</Summary>",
    ":",
    "\n",
    " ",
    "#",
    ",",
    "[",
    "]",
    "'",
    "é",
    "𝄞",
    "\u{0}",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate(rng: &mut Rng, seeds: &[String], input: &str) -> String {
    let mut s = input.to_string();
    for _ in 0..1 + rng.below(6) {
        let at = boundary(&s, rng.below(s.len() + 1));
        match rng.below(8) {
            0 | 1 => s.insert_str(at, TAGS[rng.below(TAGS.len())]),
            2 => s.truncate(at),
            3 => {
                let end = boundary(&s, at + rng.below(200));
                let piece = s[at..end].to_string();
                s.insert_str(end, &piece);
            }
            4 => {
                let end = boundary(&s, at + rng.below(100));
                s.replace_range(at..end, "");
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = boundary(other, rng.below(other.len() + 1));
                let to = boundary(other, from + rng.below(400));
                s.insert_str(at, &other[from..to]);
            }
            6 => {
                let c = char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('x');
                s.insert(at, c);
            }
            _ => {
                let digits = (rng.next() % 1000).to_string();
                s.insert_str(at, &digits);
            }
        }
        if s.len() > 20_000 {
            let cut = boundary(&s, 20_000);
            s.truncate(cut);
        }
    }
    s
}

/// Streams `text` through the detector as the engine would, forks, joins
/// and checks every offset. Returns an error message on a broken invariant.
fn drive(rng: &mut Rng, protocol: &dyn Protocol, text: &str) -> Result<usize, String> {
    let ctx = ForkContext {
        depth: rng.below(3) as u32,
        rounds: rng.below(20) as u32,
        ..ForkContext::default()
    };
    let prompt_len = boundary(text, rng.below(text.len() + 1));
    let mut detector = Detector::for_prompt(prompt_len);
    let mut fed = prompt_len;
    let mut events = 0;
    while fed < text.len() || events == 0 {
        fed = boundary(text, fed + 1 + rng.below(12));
        if fed == 0 && !text.is_empty() {
            fed = text.len();
        }
        let view = &text[..fed];
        let before = detector.seen();
        match detector.scan(protocol, view, ctx) {
            Scan::Continue => {}
            Scan::Fork(fork) => {
                events += 1;
                let end = fork.segment_end;
                if end > view.len() || !view.is_char_boundary(end) || end <= before {
                    return Err(format!(
                        "bad segment_end {end} (seen {before}, len {})",
                        view.len()
                    ));
                }
                if fork.children.is_empty() {
                    return Err("fork with no children".into());
                }
                let results: Vec<_> = fork
                    .children
                    .iter()
                    .map(|child| {
                        let _ = child.prompt.full_text(view, end);
                        let g = &TAGS[rng.below(TAGS.len())];
                        let ends = [ChildEnd::Stop, ChildEnd::Eos, ChildEnd::Length];
                        protocol.child_result(g, ends[rng.below(3)])
                    })
                    .collect();
                let join = protocol
                    .join(view, &fork, &results, ctx)
                    .map_err(|e| format!("join failed on its own fork: {e}"))?;
                match &join.layout {
                    Layout::Sequential { kept_prefix } => {
                        if join.text.get(..*kept_prefix) != view.get(..*kept_prefix) {
                            return Err("re-prefill join changed the kept prefix".into());
                        }
                    }
                    Layout::Merged {
                        fork_at, append, ..
                    } => {
                        if !join.text.starts_with(&view[..*fork_at])
                            || !join.text.ends_with(append.as_str())
                        {
                            return Err("KV-merge join text does not frame the children".into());
                        }
                    }
                }
                if protocol.join(view, &fork, &results[1..], ctx).is_ok() {
                    return Err("join accepted a wrong child count".into());
                }
                let _ = protocol.join(&view[..boundary(view, end / 2)], &fork, &results, ctx);
                detector.resume_at(join.text.len());
                break;
            }
            Scan::Refuse(refusal) => {
                events += 1;
                let limit = view.len();
                let ok = match &refusal.action {
                    Action::Sequential => true,
                    Action::Rewrite { truncate_to, .. } | Action::Finish { truncate_to } => {
                        *truncate_to <= limit && view.is_char_boundary(*truncate_to)
                    }
                };
                if !ok || refusal.at > limit {
                    return Err(format!("bad refusal offsets {refusal:?}"));
                }
                if !matches!(refusal.action, Action::Sequential) {
                    break;
                }
            }
        }
        if fed >= text.len() {
            break;
        }
    }
    Ok(events)
}

fn direct_apr(text: &str) {
    let _ = apr::parse_fork(text);
    let _ = apr::child_result(text);
    let _ = apr::join(text, &[None, Some(text)]);
    let _ = apr::ends_with_fork(text);
}

fn main() {
    let mut seconds = 60u64;
    let mut seed = 0x5eed_u64;
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--seconds" => {
                seconds = args
                    .get(i + 1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(seconds)
            }
            "--seed" => seed = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(seed),
            _ => {}
        }
        i += 2;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut seeds: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    seeds.extend(TAGS.iter().map(|t| t.to_string()));
    let protocols: Vec<Box<dyn Protocol>> = NAMES.iter().filter_map(|n| by_name(n)).collect();
    let mut rng = Rng(seed | 1);
    let start = Instant::now();
    let deadline = Duration::from_secs(seconds);
    let (mut iterations, mut events) = (0u64, 0u64);
    let mut corpus = seeds.clone();
    while start.elapsed() < deadline {
        for _ in 0..64 {
            let base = &corpus[rng.below(corpus.len())];
            let input = mutate(&mut rng, &seeds, base);
            let round_seed = rng.next();
            let outcome = panic::catch_unwind(panic::AssertUnwindSafe(|| {
                let mut rng = Rng(round_seed | 1);
                direct_apr(&input);
                let mut found = 0;
                for p in &protocols {
                    found += drive(&mut rng, p.as_ref(), &input)?;
                }
                Ok::<usize, String>(found)
            }));
            match outcome {
                Ok(Ok(found)) => {
                    events += found as u64;
                    // Keep inputs that reach a fork or refusal: they are the
                    // interesting neighbourhood to mutate further.
                    if found > 0 && corpus.len() < 4096 {
                        corpus.push(input);
                    } else if found > 0 {
                        let slot = rng.below(corpus.len());
                        corpus[slot] = input;
                    }
                }
                Ok(Err(msg)) => {
                    eprintln!("invariant broken: {msg}\ninput: {input:?}");
                    std::process::exit(1);
                }
                Err(_) => {
                    eprintln!("panic on input: {input:?}");
                    std::process::exit(1);
                }
            }
            iterations += 1;
        }
    }
    println!(
        "fuzz: {iterations} inputs x {} protocols in {:.0} s, {events} forks/refusals, corpus {}, seed {seed}: no panic, no broken invariant",
        protocols.len(),
        start.elapsed().as_secs_f64(),
        corpus.len()
    );
}
