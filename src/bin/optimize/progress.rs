//! Progress on the terminal: bars (indicatif) when stderr is a terminal, one plain line per
//! step otherwise (logs, CI), nothing with `--quiet` or `--json`.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln::progress::{NoProgress, Progress, ProgressHandle};

struct Step {
    stage: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    bar: Option<ProgressBar>,
}

/// Draws the step in progress on stderr.
pub struct Terminal {
    tty: bool,
    step: Mutex<Option<Step>>,
}

impl Progress for Terminal {
    fn start(&self, stage: &str, total: Option<u64>) {
        let bar = self.tty.then(|| {
            let bar = match total {
                Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = if total.is_some() {
                "{prefix:>12} [{bar:30}] {pos}/{len} {elapsed}"
            } else {
                "{prefix:>12} {spinner} {pos} {elapsed}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(stage.to_string());
            bar
        });
        if !self.tty {
            match total {
                Some(n) => eprintln!("{stage}: {n} steps"),
                None => eprintln!("{stage}: started"),
            }
        }
        if let Ok(mut s) = self.step.lock() {
            *s = Some(Step { stage: stage.to_string(), total, done: 0, started: Instant::now(), bar });
        }
    }

    fn tick(&self, n: u64) {
        if let Ok(mut s) = self.step.lock()
            && let Some(step) = s.as_mut()
        {
            step.done += n;
            if let Some(bar) = &step.bar {
                bar.inc(n);
            }
        }
    }

    fn finish(&self) {
        let Ok(mut s) = self.step.lock() else { return };
        let Some(step) = s.take() else { return };
        if let Some(bar) = step.bar {
            bar.finish_and_clear();
        }
        let of = step.total.map(|t| format!("/{t}")).unwrap_or_default();
        eprintln!("{}: {}{of} done in {:.1} s", step.stage, step.done, step.started.elapsed().as_secs_f64());
    }
}

/// The progress reporter for this run.
pub fn reporter(quiet: bool) -> ProgressHandle {
    if quiet {
        ProgressHandle::new(NoProgress)
    } else {
        ProgressHandle::new(Terminal { tty: std::io::stderr().is_terminal(), step: Mutex::new(None) })
    }
}
