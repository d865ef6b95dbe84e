//! Helpers shared by the tests that run the real `cvm-agent` binary and read its log.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Appends every line `output` gives to `log` (the agent logs to stdout, errors to stderr).
pub fn collect_lines(output: impl std::io::Read + Send + 'static, log: &Arc<Mutex<String>>) {
    let sink = Arc::clone(log);
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
}

/// The first log line containing `text`; fails when the agent exits or takes over 60 s.
pub fn wait_for_line(child: &mut Child, log: &Mutex<String>, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(line) = log.lock().unwrap().lines().find(|l| l.contains(text)) {
            return line.to_owned();
        }
        if let Some(status) = child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(200));
            panic!("the agent exited ({status}):\n{}", log.lock().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "no {text:?} line:\n{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
