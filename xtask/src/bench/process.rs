//! One tool process at a time: timed from start to exit, stopped at a timeout, and the line
//! of its output that says why it failed.

use std::fs;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::clip;

/// How a tool's process ended.
#[derive(Debug)]
pub(super) enum Ended {
    Exited(ExitStatus),
    /// Stopped at the timeout.
    TimedOut,
    /// Could not be started (the reason).
    NotStarted(String),
}

/// How one tool process went.
pub(super) struct Outcome {
    pub(super) ended: Ended,
    pub(super) seconds: f64,
    pub(super) stdout: String,
    pub(super) stderr: String,
    /// The process's own peak resident set, KiB (Linux), when it exited.
    pub(super) peak_rss_kib: Option<u64>,
}

impl Outcome {
    /// The line that says why the tool failed.
    pub(super) fn failure_line(&self, status: ExitStatus) -> String {
        error_line(&self.stderr).or_else(|| error_line(&self.stdout)).unwrap_or_else(|| format!("exit {status}"))
    }
}

/// The line of a tool's output that names its error: for a Python traceback the exception
/// line after it (the first line is only "Traceback…"); for Kiln the `error:` line with its
/// first indented detail (progress lines come before it); otherwise the first non-empty line.
fn error_line(text: &str) -> Option<String> {
    let traceback = text.rfind("Traceback (most recent call last):").and_then(|at| {
        text[at..].lines().skip(1).find(|l| !l.is_empty() && !l.starts_with(char::is_whitespace)).map(str::to_string)
    });
    let kiln_error = || {
        let mut lines = text.lines().skip_while(|l| !l.starts_with("error:"));
        let first = lines.next()?.trim();
        Some(match lines.next().filter(|l| l.starts_with(char::is_whitespace)) {
            Some(detail) => format!("{first} {}", detail.trim()),
            None => first.to_string(),
        })
    };
    let line = traceback
        .or_else(kiln_error)
        .or_else(|| text.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string))?;
    Some(clip(line.trim(), 200))
}

/// Runs `cmd` with its output in `dir/{stdout,stderr}.txt`, timing process start to exit.
pub(super) fn timed_run(mut cmd: Command, dir: &Path, timeout: Duration) -> Result<Outcome> {
    let out_path = dir.join("stdout.txt");
    let err_path = dir.join("stderr.txt");
    let stdout = fs::File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
    let stderr = fs::File::create(&err_path).with_context(|| format!("creating {}", err_path.display()))?;
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let started = Instant::now();
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let why = format!("could not start {}: {e}", Path::new(cmd.get_program()).display());
            return Ok(Outcome {
                ended: Ended::NotStarted(why),
                seconds: 0.0,
                stdout: String::new(),
                stderr: String::new(),
                peak_rss_kib: None,
            });
        }
    };
    let pid = child.id();
    // The child is waited for on a thread so its exit is timed exactly; this thread only
    // watches the clock.
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let waited = wait_measured(child);
        let _ = tx.send((waited, Instant::now()));
    });
    let (ended, seconds, peak_rss_kib) = match rx.recv_timeout(timeout) {
        Ok(((status, rss), at)) => {
            (Ended::Exited(status.context("waiting for a tool")?), at.duration_since(started).as_secs_f64(), rss)
        }
        Err(_) => {
            kill(pid);
            let _ = rx.recv();
            (Ended::TimedOut, timeout.as_secs_f64(), None)
        }
    };
    let _ = waiter.join();
    let read = |p: &Path| fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    Ok(Outcome { ended, seconds, stdout: read(&out_path), stderr: read(&err_path), peak_rss_kib })
}

/// Waits for the child with `wait4`, which reports that child's own peak RSS (the tools are
/// single processes: Python or `optimize`).
#[cfg(target_os = "linux")]
fn wait_measured(child: std::process::Child) -> (std::io::Result<ExitStatus>, Option<u64>) {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain old data; zeroed is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; the pid is our own child, not yet reaped.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            // The child is reaped; `Child` does not wait on drop.
            drop(child);
            return (Ok(ExitStatus::from_raw(status)), Some(usage.ru_maxrss as u64));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return (Err(e), None);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn wait_measured(mut child: std::process::Child) -> (std::io::Result<ExitStatus>, Option<u64>) {
    (child.wait(), None)
}

/// Stops a tool we started that ran past its time, by its process id.
fn kill(pid: u32) {
    let pid = pid.to_string();
    let _ = if cfg!(windows) {
        Command::new("taskkill").args(["/F", "/T", "/PID", &pid]).status()
    } else {
        Command::new("kill").args(["-9", &pid]).status()
    };
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_line_picks_the_reason() {
        let py = "Simplifying...\nTraceback (most recent call last):\n  File \"x\", line 1\n    foo()\n\
                  RuntimeError: Nodes in a graph must be topologically sorted\nname: If_6\n";
        assert_eq!(error_line(py).unwrap(), "RuntimeError: Nodes in a graph must be topologically sorted");
        assert_eq!(error_line("\n  error: unknown option --opt\nusage: ...\n").unwrap(), "error: unknown option --opt");
        let kiln = "optimizing the graph: done in 0.0 s\nerror: the artifact misses its tolerance:\n  \
                    stateN: cosine_min = 0.62 (needs >= 0.9)\n  other: fine\n";
        assert_eq!(
            error_line(kiln).unwrap(),
            "error: the artifact misses its tolerance: stateN: cosine_min = 0.62 (needs >= 0.9)"
        );
        assert_eq!(error_line(" \n"), None);
        assert_eq!(error_line(&"x".repeat(300)).unwrap().chars().count(), 201);
    }

    #[test]
    fn timed_run_records_failures_and_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let mut ok = Command::new("sh");
        ok.args(["-c", "echo out; echo 'error: no such model' >&2; exit 3"]);
        let o = timed_run(ok, dir.path(), Duration::from_secs(30)).unwrap();
        let Ended::Exited(status) = o.ended else { panic!("{:?}", o.ended) };
        assert!(!status.success());
        assert_eq!(o.failure_line(status), "error: no such model");
        if cfg!(target_os = "linux") {
            assert!(o.peak_rss_kib.is_some_and(|k| k > 0));
        }
        let mut slow = Command::new("sleep");
        slow.arg("30");
        let started = Instant::now();
        let o = timed_run(slow, dir.path(), Duration::from_millis(200)).unwrap();
        assert!(matches!(o.ended, Ended::TimedOut));
        assert!(started.elapsed() < Duration::from_secs(10));
        let missing = timed_run(Command::new("/nonexistent/tool"), dir.path(), Duration::from_secs(1)).unwrap();
        assert!(matches!(&missing.ended, Ended::NotStarted(why) if why.contains("could not start")));
    }
}
