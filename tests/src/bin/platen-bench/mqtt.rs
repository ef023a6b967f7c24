//! A bare rumqttc client for measuring: PUBACKs and incoming publishes as channels,
//! with the same socket options Platen uses (TCP_NODELAY).

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::time::Duration;
use tokio::sync::mpsc;

pub struct BenchMqtt {
    pub client: AsyncClient,
    pub acks: mpsc::UnboundedReceiver<u16>,
    pub incoming: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
}

impl BenchMqtt {
    /// Connect and subscribe to `filters` (QoS 1); returns once every SUBACK is in.
    pub async fn connect(port: u16, client_id: &str, filters: &[String]) -> BenchMqtt {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_max_packet_size(1024 * 1024, 1024 * 1024)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(opts, 1024);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        el.set_network_options(net);
        for f in filters {
            client
                .subscribe(f.as_str(), QoS::AtLeastOnce)
                .await
                .expect("subscribe");
        }
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (in_tx, incoming) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let (mut subacks, wanted) = (0, filters.len());
        if wanted == 0 {
            if let Some(t) = ready_tx.take() {
                let _ = t.send(());
            }
        }
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) if wanted == 0 => {
                        if let Some(t) = ready_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks += 1;
                        if subacks >= wanted {
                            if let Some(t) = ready_tx.take() {
                                let _ = t.send(());
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(a))) => {
                        let _ = ack_tx.send(a.pkid);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = in_tx.send((p.topic, p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    // The broker stopped (end of a section): the channels close.
                    Err(_) => return,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("bench client subscribed")
            .expect("bench client task");
        BenchMqtt {
            client,
            acks,
            incoming,
        }
    }

    /// Publish with QoS 1 and wait for the broker's PUBACK.
    pub async fn publish_acked(&mut self, topic: &str, retain: bool, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .expect("publish");
        tokio::time::timeout(Duration::from_secs(10), self.acks.recv())
            .await
            .expect("PUBACK within 10 s")
            .expect("client task alive");
    }
}
