//! A real terminal for tests and benches of the TUI: a tmux session running one
//! command in a fixed-size window, with keys sent to it and its screen read back
//! (capture-pane). Waits have deadlines; nothing sleeps a fixed time.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The session is killed when dropped.
pub struct Tmux {
    pub name: String,
}

impl Tmux {
    /// Runs `cmd` with `env`. The pane stays after the command ends, with
    /// `KODEL-EXITED <code>` on screen, so its last words can be read.
    pub fn start(cmd: &str, env: &[(&str, String)], width: u16, height: u16) -> Tmux {
        let name = format!("kodel-test-{}", uuid::Uuid::new_v4().simple());
        let mut c = Command::new("tmux");
        c.args(["new-session", "-d", "-s", &name, "-x", &width.to_string(), "-y", &height.to_string()]);
        for (k, v) in env {
            c.args(["-e", &format!("{k}={v}")]);
        }
        let status = c.arg(format!("{cmd}; echo KODEL-EXITED $?; sleep 600")).status().unwrap();
        assert!(status.success(), "tmux could not start");
        Tmux { name }
    }

    /// Keys by tmux's names (`Enter`, `C-s`, `Escape`) or single characters.
    pub fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux").args(["send-keys", "-t", &self.name]).args(keys).status().unwrap();
        assert!(status.success());
    }

    /// Text typed as is.
    pub fn text(&self, text: &str) {
        let status = Command::new("tmux").args(["send-keys", "-t", &self.name, "-l", text]).status().unwrap();
        assert!(status.success());
    }

    pub fn screen(&self) -> String {
        let out = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.name]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows `text`; gives the screen.
    pub fn wait_for(&self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(Instant::now() < deadline, "{text:?} did not show within {within:?}; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of the pane's process (the command itself when it was `exec`ed).
    pub fn pid(&self) -> u32 {
        let out = Command::new("tmux").args(["list-panes", "-t", &self.name, "-F", "#{pane_pid}"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.name]).stderr(Stdio::null()).status();
    }
}
