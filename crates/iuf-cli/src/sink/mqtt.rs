//! The MQTT sink (rumqttc, plain TCP): each event is published with QoS 1 and leaves the queue
//! only when the broker has acknowledged it (PUBACK), one at a time, so events keep their order
//! and a broker that restarts loses none (one may arrive twice: QoS 1 is at least once; `id`
//! tells duplicates apart). A lost connection is opened again with backoff (0.1 s doubling to
//! 5 s) by a fresh client, which starts with nothing of the old session: the queue alone says
//! what is still to send.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rumqttc::{Client, ConnectionError, Event as MqttEvent, MqttOptions, Outgoing, Packet, QoS};

use super::queue::Queue;
use super::{backoff, Deliver, Event};

/// Where and how to publish.
pub struct Mqtt {
    options: MqttOptions,
    /// `host:port`, for messages.
    broker: String,
    prefix: String,
    retain: bool,
}

/// Replaces the characters a topic level may not hold (`/`, `+`, `#`, NUL) in an object name.
fn topic_level(name: &str) -> String {
    name.chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// A broker URL's parts.
#[derive(Debug, PartialEq, Eq)]
struct BrokerUrl {
    /// User and password.
    credentials: Option<(String, String)>,
    host: String,
    port: u16,
}

/// `mqtt://[USER[:PASSWORD]@]HOST[:PORT]` split into its parts.
fn parse_url(url: &str) -> Result<BrokerUrl> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("--mqtt {url}: expected mqtt://HOST[:PORT] (for example mqtt://localhost:1883)");
    };
    match scheme {
        "mqtt" | "tcp" => {}
        "mqtts" | "ssl" | "ws" | "wss" => bail!(
            "--mqtt {url}: {scheme}:// is not supported (this build speaks MQTT over plain TCP); \
             use mqtt://HOST[:PORT], through a local bridge or a tunnel for TLS"
        ),
        _ => bail!("--mqtt {url}: unknown scheme `{scheme}`; expected mqtt://HOST[:PORT]"),
    }
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        bail!("--mqtt {url}: a broker URL has no path; give the topic with --mqtt-topic");
    }
    let (creds, host) = match rest.rsplit_once('@') {
        Some((c, h)) => {
            let (u, p) = c.split_once(':').unwrap_or((c, ""));
            (Some((u.to_string(), p.to_string())), h)
        }
        None => (None, rest),
    };
    let (host, port) = match host.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(port) if port > 0 => (h, port),
            _ => bail!("--mqtt {url}: `{p}` is not a port number"),
        },
        _ => (host, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("--mqtt {url}: no host; expected mqtt://HOST[:PORT]");
    }
    Ok(BrokerUrl {
        credentials: creds,
        host: host.to_string(),
        port,
    })
}

impl Mqtt {
    pub fn new(url: &str, prefix: &str, retain: bool, client_id: &str) -> Result<Self> {
        let BrokerUrl {
            credentials: creds,
            host,
            port,
        } = parse_url(url)?;
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() || prefix.contains(['+', '#', '\0']) {
            bail!(
                "--mqtt-topic `{prefix}`: expected a topic prefix without the wildcards + and # \
                 (for example `iuf` or `line4/iuf`)"
            );
        }
        let mut options = MqttOptions::new(client_id, host.clone(), port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_clean_session(true);
        // Results with long error messages or paths stay far below this.
        options.set_max_packet_size(1 << 20, 1 << 20);
        if let Some((u, p)) = creds {
            options.set_credentials(u, p);
        }
        Ok(Self {
            options,
            broker: format!("{host}:{port}"),
            prefix: prefix.to_string(),
            retain,
        })
    }

    /// `PREFIX/<object>/<kind>`, or `PREFIX/<kind>` for an event about no object.
    fn topic(&self, e: &Event) -> String {
        match &e.object {
            Some(o) => format!("{}/{}/{}", self.prefix, topic_level(o), e.kind),
            None => format!("{}/{}", self.prefix, e.kind),
        }
    }
}

impl Deliver for Mqtt {
    fn run(self: Box<Self>, queue: Arc<Queue>) {
        let mut wait = Duration::from_millis(100);
        // The first failure of an outage is logged; the recovery too.
        let mut down_since: Option<Instant> = None;
        while !queue.finished() {
            // A fresh client for every connection: nothing of an old session is replayed, the
            // queue's front is published again instead.
            let (client, mut connection) = Client::new(self.options.clone(), 8);
            let mut connected = false;
            // The event published and not yet acknowledged: (queue seq, packet id once known).
            let mut inflight: Option<(u64, Option<u16>)> = None;
            let error: Option<ConnectionError> = loop {
                if queue.finished() {
                    let _ = client.try_disconnect();
                    break None;
                }
                if connected && inflight.is_none() {
                    // Waiting here, on the queue, an event pushed meanwhile goes out at once.
                    if let Some(front) = queue.front(Duration::from_millis(50)) {
                        let retain = self.retain && front.event.kind == "verdict";
                        let topic = self.topic(&front.event);
                        if client
                            .try_publish(topic, QoS::AtLeastOnce, retain, front.event.text.clone())
                            .is_ok()
                        {
                            inflight = Some((front.seq, None));
                        }
                    }
                }
                // Until connected, long enough for the connection and its CONNACK (rumqttc's
                // 5 s connection timeout): a shorter wait would cancel and restart a slow
                // connection forever.
                let poll = if !connected {
                    Duration::from_secs(6)
                } else if inflight.is_some() {
                    Duration::from_millis(50)
                } else {
                    // Idle: the queue was waited on above; the connection is only serviced
                    // (pings, what the broker sends).
                    Duration::from_millis(1)
                };
                match connection.recv_timeout(poll) {
                    Ok(Ok(MqttEvent::Incoming(Packet::ConnAck(_)))) => {
                        connected = true;
                        wait = Duration::from_millis(100);
                        if let Some(t) = down_since.take() {
                            tracing::warn!(
                                "mqtt sink: connected to {} again after {:.1} s",
                                self.broker,
                                t.elapsed().as_secs_f64()
                            );
                        }
                    }
                    Ok(Ok(MqttEvent::Outgoing(Outgoing::Publish(pkid)))) => {
                        if let Some((_, id @ None)) = &mut inflight {
                            *id = Some(pkid);
                        }
                    }
                    Ok(Ok(MqttEvent::Incoming(Packet::PubAck(ack)))) => {
                        if let Some((seq, Some(pkid))) = inflight {
                            if pkid == ack.pkid {
                                queue.delivered(seq);
                                inflight = None;
                            }
                        }
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => break Some(e),
                    Err(rumqttc::RecvTimeoutError::Timeout) => {}
                    Err(rumqttc::RecvTimeoutError::Disconnected) => break None,
                }
            };
            let Some(e) = error else { break };
            queue.stats.retries.inc();
            if down_since.is_none() {
                down_since = Some(Instant::now());
                tracing::warn!(
                    "mqtt sink: broker {} unreachable or connection lost ({e}); {} event(s) \
                     wait in the queue, retrying",
                    self.broker,
                    queue.stats.queued.get()
                );
            } else {
                tracing::debug!("mqtt sink: {} still unreachable: {e}", self.broker);
            }
            queue.sleep(wait);
            wait = backoff(wait, Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_parsed_or_refused_with_the_reason() {
        let url = |credentials: Option<(&str, &str)>, host: &str, port| BrokerUrl {
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            host: host.into(),
            port,
        };
        assert_eq!(
            parse_url("mqtt://localhost").unwrap(),
            url(None, "localhost", 1883)
        );
        assert_eq!(
            parse_url("mqtt://u:pw@10.0.0.2:1884/").unwrap(),
            url(Some(("u", "pw")), "10.0.0.2", 1884)
        );
        assert_eq!(
            parse_url("tcp://[::1]:1885").unwrap(),
            url(None, "::1", 1885)
        );
        for (bad, why) in [
            ("localhost:1883", "expected mqtt://"),
            ("mqtts://broker", "not supported"),
            ("http://broker", "unknown scheme"),
            ("mqtt://broker:x", "not a port"),
            ("mqtt://broker/topic", "no path"),
            ("mqtt://", "no host"),
        ] {
            let e = parse_url(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(topic_level("a/b+c#"), "a_b_c_");
    }
}
