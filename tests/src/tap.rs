//! A raw MQTT client that records what arrives on some filters and can publish.

use super::*;
/// A raw MQTT client that records what arrives on some filters (each distinct
/// payload once) and can publish.
pub struct Tap {
    client: rumqttc::AsyncClient,
    seen: Seen,
}

/// (topic, payload) pairs, in arrival order.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

impl Tap {
    pub async fn start(port: u16, client_id: &str, filters: &[&str]) -> Tap {
        let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        // Large enough to send the oversized messages of the bad-input test.
        opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 64);
        for f in filters {
            client
                .subscribe(*f, rumqttc::QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        let seen: Seen = Default::default();
        let s = seen.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let mut subacks = 0;
        let wanted = filters.len();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        subacks += 1;
                        if subacks >= wanted {
                            if let Some(t) = ready_tx.take() {
                                let _ = t.send(());
                            }
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let mut g = s.lock().unwrap();
                        let item = (p.topic.clone(), p.payload.to_vec());
                        if !g.contains(&item) {
                            g.push(item);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("tap subscribed")
            .unwrap();
        Tap { client, seen }
    }

    pub fn payloads(&self) -> Vec<Vec<u8>> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Every message decoded as `T` (messages that do not decode are skipped).
    pub fn decoded<T: platen_protocol::codec::Message>(&self) -> Vec<T> {
        self.payloads()
            .iter()
            .filter_map(|p| platen_protocol::decode::<T>(p).ok())
            .collect()
    }

    /// Wait until `pick` finds something in the decoded messages.
    pub async fn wait_for<T: platen_protocol::codec::Message, R>(
        &self,
        within: Duration,
        what: &str,
        log: impl Fn() -> String,
        pick: impl Fn(&[T]) -> Option<R>,
    ) -> R {
        let end = tokio::time::Instant::now() + within;
        loop {
            if let Some(r) = pick(&self.decoded::<T>()) {
                return r;
            }
            if tokio::time::Instant::now() > end {
                panic!(
                    "{what} did not arrive within {within:?}\n--- log ---\n{}",
                    log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
}
