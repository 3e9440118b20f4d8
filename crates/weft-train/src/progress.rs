//! What a training run tells the person watching it, on stderr: a progress
//! bar on a terminal, plain lines at a steady interval elsewhere (a log
//! file, a pipe, a CI job), or nothing.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum ProgressMode {
    /// Nothing (library use, tests).
    #[default]
    Hidden,
    /// Only the lines that say what happened (resumed, settings changed,
    /// interrupted, validation), no step progress (`--quiet`).
    Quiet,
    /// A bar that redraws in place, fitted to the terminal's width.
    Bar,
    /// A line per step once `every` has passed since the last one (and for
    /// the first and last steps of a call), for logs.
    Lines { every: Duration },
}

impl ProgressMode {
    /// `weft train`'s choice: notes only when `quiet`, a bar when stderr
    /// is a terminal, plain lines every `every` otherwise.
    pub fn for_stderr(quiet: bool, every: Duration) -> ProgressMode {
        if quiet {
            ProgressMode::Quiet
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bar
        } else {
            ProgressMode::Lines { every }
        }
    }
}

/// One step's numbers, as shown.
pub(crate) struct StepReport {
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    pub tokens_per_second: f64,
    pub val_loss: Option<f32>,
}

pub(crate) struct Progress {
    mode: ProgressMode,
    bar: Option<ProgressBar>,
    bar_width: u16,
    total: usize,
    first_step: usize,
    started: Instant,
    last_line: Option<Instant>,
}

impl Progress {
    /// Progress from `step` towards `total` steps.
    pub fn new(mode: ProgressMode, step: usize, total: usize) -> Progress {
        let mut p = Progress {
            mode,
            bar: None,
            bar_width: 0,
            total,
            first_step: step,
            started: Instant::now(),
            last_line: None,
        };
        if mode == ProgressMode::Bar {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            p.bar = Some(bar.clone());
            // The style first: the first draw must already fit.
            p.fit_to_terminal();
            bar.set_position(step as u64);
        }
        p
    }

    /// Re-chooses the bar's layout when the terminal's width changed.
    fn fit_to_terminal(&mut self) {
        let Some(bar) = &self.bar else { return };
        let width = console::Term::stderr().size().1;
        if width != self.bar_width {
            self.bar_width = width;
            bar.set_style(bar_style(width));
        }
    }

    /// A line of its own: above the bar, or plainly (nothing when hidden).
    pub fn note(&self, text: &str) {
        match (&self.mode, &self.bar) {
            (ProgressMode::Hidden, _) => {}
            (_, Some(bar)) => bar.println(text),
            _ => eprintln!("{text}"),
        }
    }

    /// After each step.
    pub fn step(&mut self, r: &StepReport) {
        match self.mode {
            ProgressMode::Hidden | ProgressMode::Quiet => {}
            ProgressMode::Bar => {
                self.fit_to_terminal();
                if let Some(bar) = &self.bar {
                    bar.set_position(r.step as u64);
                    bar.set_message(format!(
                        "loss {:.3} | lr {:.2e} | {:.1}k tok/s{}",
                        r.loss,
                        r.lr,
                        r.tokens_per_second / 1000.0,
                        r.val_loss
                            .map(|v| format!(" | val {v:.3}"))
                            .unwrap_or_default()
                    ));
                }
            }
            ProgressMode::Lines { every } => {
                let due = match self.last_line {
                    None => true,
                    Some(t) => t.elapsed() >= every,
                };
                if due || r.step == self.total {
                    self.last_line = Some(Instant::now());
                    eprintln!("{}", self.line(r));
                }
            }
        }
    }

    /// The plain progress line: step, loss, lr, speed, time and ETA.
    fn line(&self, r: &StepReport) -> String {
        let elapsed = self.started.elapsed();
        let done = r.step.saturating_sub(self.first_step).max(1);
        let left = self.total.saturating_sub(r.step);
        let eta = elapsed.mul_f64(left as f64 / done as f64);
        format!(
            "step {}/{} ({:.0}%)  loss {:.4}  lr {:.2e}  {:.0} tok/s{}  elapsed {}  eta {}",
            r.step,
            self.total,
            100.0 * r.step as f64 / self.total.max(1) as f64,
            r.loss,
            r.lr,
            r.tokens_per_second,
            r.val_loss
                .map(|v| format!("  val {v:.4}"))
                .unwrap_or_default(),
            clock(elapsed),
            clock(eta),
        )
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `1h02m03s`, `4m05s`, `6s`.
pub(crate) fn clock(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// The bar's layout for a terminal `width` columns wide. Everything but the
/// message has a fixed width that fits (`{wide_msg}` is cut to what is
/// left), so a line never wraps: a wrapped bar leaves a copy of itself on
/// every redraw.
pub(crate) fn bar_style(width: u16) -> ProgressStyle {
    let width = width as usize;
    // "1234567/1234567 [00:00:00<00:00:00] " is 37 columns for runs of up
    // to 10 million steps; the bar takes up to 30 more, leaving the
    // message at least 30.
    let template = if width >= 80 {
        let bar = (width - 67).min(30);
        format!("{{bar:{bar}}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}] {{wide_msg}}")
    } else if width >= 40 {
        "{pos}/{len} [{elapsed_precise}<{eta_precise}] {wide_msg}".to_string()
    } else {
        "{pos}/{len} {wide_msg}".to_string()
    };
    ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A terminal of a given width that records what is drawn, line by line.
    #[derive(Debug, Clone)]
    struct Screen {
        width: u16,
        lines: Arc<Mutex<Vec<String>>>,
    }

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            self.width
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.lines.lock().unwrap().push(s.to_string());
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.lines.lock().unwrap().push(s.to_string());
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// At every width, the drawn bar (with a long message, the widest step
    /// counts and an hour-long ETA) fits on one line.
    #[test]
    fn the_bar_never_wraps() {
        for width in [24u16, 40, 50, 79, 80, 100, 120, 200] {
            let screen = Screen {
                width,
                lines: Arc::default(),
            };
            let bar = ProgressBar::with_draw_target(
                Some(9_999_999),
                ProgressDrawTarget::term_like(Box::new(screen.clone())),
            );
            bar.set_style(bar_style(width));
            bar.set_message(
                "loss 2.345 | lr 3.00e-03 | 12.3k tok/s | val 2.401 and more words to overflow",
            );
            bar.set_position(1_234_567);
            bar.abandon();
            let lines = screen.lines.lock().unwrap();
            assert!(!lines.is_empty(), "nothing drawn at width {width}");
            for line in lines.iter() {
                let cols = console::measure_text_width(line);
                assert!(
                    cols <= width as usize,
                    "width {width}: {cols} columns: {line:?}"
                );
            }
            // The message shows, cut to fit, where there is room for it.
            if width >= 80 {
                assert!(lines.iter().any(|l| l.contains("loss 2.345")), "{lines:?}");
            }
        }
    }

    #[test]
    fn clock_reads_as_hours_minutes_seconds() {
        assert_eq!(clock(Duration::from_secs(6)), "6s");
        assert_eq!(clock(Duration::from_secs(245)), "4m05s");
        assert_eq!(clock(Duration::from_secs(3723)), "1h02m03s");
    }
}
