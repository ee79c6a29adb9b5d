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
        // On a terminal the bar was the report; elsewhere one plain line per finished step.
        if !self.tty {
            let seconds = step.started.elapsed().as_secs_f64();
            match step.total {
                Some(t) => eprintln!("{}: {}/{t} done in {seconds:.1} s", step.stage, step.done),
                None => eprintln!("{}: done in {seconds:.1} s", step.stage),
            }
        }
    }
}

/// The progress reporter for this run: bars on a terminal, one plain line per finished step
/// when stderr is a file or pipe, nothing with `--quiet`/`--json` or under CI (the `CI`
/// variable that CI services set), where build logs stay quiet.
pub fn reporter(quiet: bool) -> ProgressHandle {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
    let tty = std::io::stderr().is_terminal();
    if quiet || (ci && !tty) {
        ProgressHandle::new(NoProgress)
    } else {
        ProgressHandle::new(Terminal { tty, step: Mutex::new(None) })
    }
}
