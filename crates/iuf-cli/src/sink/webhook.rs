//! The webhook sink: each event is POSTed as JSON (ureq, blocking, on the sink's thread), one at
//! a time and in order; a failed delivery is retried with exponential backoff until the endpoint
//! takes it. Only a status that says the event itself can never be taken (400, 413, 415, 422)
//! drops it, counted and logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::queue::Queue;
use super::{backoff, Deliver};

/// Statuses that refuse the event itself: sending it again cannot help.
const REFUSED_FOR_GOOD: [u16; 4] = [400, 413, 415, 422];

pub struct Webhook {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Webhook {
    pub fn new(url: &str, token: Option<&str>) -> Result<Self> {
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://"))
            || url.split_once("://").is_none_or(|(_, r)| r.is_empty())
        {
            bail!("--webhook {url}: expected an http:// or https:// URL");
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build();
        Ok(Self {
            url: url.to_string(),
            token: token.filter(|t| !t.is_empty()).map(str::to_string),
            agent,
        })
    }

    /// One attempt: Ok(true) delivered, Ok(false) refused for good, Err(why) to retry.
    fn post(&self, body: &str) -> std::result::Result<bool, String> {
        let mut req = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json");
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        match req.send_string(body) {
            Ok(_) => Ok(true),
            Err(ureq::Error::Status(code, _)) if REFUSED_FOR_GOOD.contains(&code) => Ok(false),
            Err(ureq::Error::Status(code, r)) => Err(format!("HTTP {code} {}", r.status_text())),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Deliver for Webhook {
    fn run(self: Box<Self>, queue: Arc<Queue>) {
        let first_wait = Duration::from_millis(250);
        let mut wait = first_wait;
        let mut down_since: Option<Instant> = None;
        while !queue.finished() {
            let Some(front) = queue.front(Duration::from_millis(500)) else {
                continue;
            };
            match self.post(&front.event.text) {
                Ok(true) => {
                    queue.delivered(front.seq);
                    wait = first_wait;
                    if let Some(t) = down_since.take() {
                        tracing::warn!(
                            "webhook sink: {} takes events again after {:.1} s",
                            self.url,
                            t.elapsed().as_secs_f64()
                        );
                    }
                }
                Ok(false) => {
                    queue.rejected(front.seq);
                    tracing::error!(
                        "webhook sink: {} refused an event for good (a 4xx that retrying cannot \
                         fix); dropped ({} dropped in all): {}",
                        self.url,
                        queue.stats.dropped.get(),
                        front.event.text
                    );
                }
                Err(why) => {
                    queue.stats.retries.inc();
                    if down_since.is_none() {
                        down_since = Some(Instant::now());
                        tracing::warn!(
                            "webhook sink: POST {} failed ({why}); {} event(s) wait in the queue, \
                             retrying with backoff",
                            self.url,
                            queue.stats.queued.get()
                        );
                    } else {
                        tracing::debug!("webhook sink: POST {} failed again: {why}", self.url);
                    }
                    if queue.past_deadline() {
                        break;
                    }
                    queue.sleep(wait);
                    wait = backoff(wait, Duration::from_secs(10));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_must_be_http() {
        assert!(Webhook::new("http://127.0.0.1:9/x", None).is_ok());
        assert!(Webhook::new("https://line.example/hook", Some("t")).is_ok());
        for bad in ["ftp://x", "127.0.0.1:80", "http://"] {
            let e = Webhook::new(bad, None).err().unwrap().to_string();
            assert!(e.contains("expected an http"), "{bad}: {e}");
        }
    }
}
