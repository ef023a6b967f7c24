//! A UDP proxy between the agent and a simulated printer that breaks SNMP the way
//! real networks and printers do: no answer, an answer from another address, an
//! answer with another request id, a SET refused with a chosen error-status, a
//! printer that reboots between a SET and the read-back, a printer that answers some
//! OIDs and not others. SNMPv1/v2c only (the messages are decoded with async-snmp).

use async_snmp::message::CommunityMessage;
use async_snmp::{DecodeConfig, Oid, Pdu, PduBody, PduType, StandardPduType};
use bytes::Bytes;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

/// What the proxy does to the traffic.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Pass everything through.
    None,
    /// Never answer (a printer that is off, or a firewall).
    Drop,
    /// Answer from another UDP port than the one asked.
    WrongSource,
    /// Answer with the request id plus one.
    WrongRequestId,
    /// Answer every SET with this error-status (index 1) without forwarding it.
    RefuseSet(i32),
    /// Forward SETs; when the printer has answered one, reboot it before the
    /// answer is passed on (so the read-back meets the rebooted printer).
    RebootAfterSet,
    /// Requests naming this OID get no answer; all others are answered.
    Silent(Oid),
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    pub requests: u64,
    pub sets: u64,
    pub answered: u64,
}

type Hook = Arc<dyn Fn() + Send + Sync>;

pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    counts: Arc<Mutex<Counts>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Proxy to `upstream`; `reboot` is called for [`Fault::RebootAfterSet`].
    pub async fn start(upstream: SocketAddr, reboot: impl Fn() + Send + Sync + 'static) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind proxy");
        let stray = UdpSocket::bind("127.0.0.1:0").await.expect("bind stray");
        let back = UdpSocket::bind("127.0.0.1:0").await.expect("bind upstream");
        back.connect(upstream).await.expect("connect upstream");
        let addr = front.local_addr().expect("proxy address");
        let fault = Arc::new(Mutex::new(Fault::None));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let task = tokio::spawn(run(
            front,
            stray,
            back,
            fault.clone(),
            counts.clone(),
            Arc::new(reboot),
        ));
        FaultProxy {
            addr,
            fault,
            counts,
            task,
        }
    }

    pub fn set(&self, f: Fault) {
        *self.fault.lock().expect("fault lock") = f;
    }

    /// Counts since the last call (and reset them).
    pub fn take_counts(&self) -> Counts {
        std::mem::take(&mut *self.counts.lock().expect("counts lock"))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A PDU's request id, body fields and varbinds.
type RawPdu = (i32, PduBody, Vec<async_snmp::VarBind>);

fn decode(b: &[u8]) -> Option<(CommunityMessage, RawPdu)> {
    let m = CommunityMessage::decode(Bytes::copy_from_slice(b), DecodeConfig::default())
        .ok()?
        .value;
    let pdu = m.pdu().standard()?.clone();
    Some((m, pdu.into_raw_parts()))
}

fn encode(m: &CommunityMessage, pdu: Pdu) -> Option<Bytes> {
    CommunityMessage::v2c(m.community().clone(), pdu)
        .ok()?
        .encode()
        .ok()
}

async fn run(
    front: UdpSocket,
    stray: UdpSocket,
    back: UdpSocket,
    fault: Arc<Mutex<Fault>>,
    counts: Arc<Mutex<Counts>>,
    reboot: Hook,
) {
    let mut client: Option<SocketAddr> = None;
    let mut sets: HashSet<i32> = HashSet::new();
    let mut a = vec![0u8; 65536];
    let mut b = vec![0u8; 65536];
    loop {
        tokio::select! {
            r = front.recv_from(&mut a) => {
                let Ok((n, from)) = r else { continue };
                client = Some(from);
                let f = fault.lock().expect("fault lock").clone();
                let decoded = decode(&a[..n]);
                let is_set = decoded
                    .as_ref()
                    .is_some_and(|(m, _)| m.pdu().pdu_type() == PduType::SetRequest);
                {
                    let mut c = counts.lock().expect("counts lock");
                    c.requests += 1;
                    c.sets += u64::from(is_set);
                }
                match (&f, &decoded) {
                    (Fault::Drop, _) => continue,
                    (Fault::Silent(o), Some((_, (_, _, vbs)))) if vbs.iter().any(|v| v.oid == *o) => continue,
                    (Fault::RefuseSet(status), Some((m, (id, _, vbs)))) if is_set => {
                        let body = PduBody::Standard {
                            pdu_type: StandardPduType::Response,
                            error_status: *status,
                            error_index: 1,
                        };
                        if let Some(out) = encode(m, Pdu::from_raw_parts(*id, body, vbs.clone())) {
                            let _ = front.send_to(&out, from).await;
                            counts.lock().expect("counts lock").answered += 1;
                        }
                        continue;
                    }
                    _ => {}
                }
                if is_set {
                    if let Some((_, (id, _, _))) = &decoded {
                        sets.insert(*id);
                    }
                }
                let _ = back.send(&a[..n]).await;
            }
            r = back.recv(&mut b) => {
                let Ok(n) = r else { continue };
                let Some(to) = client else { continue };
                let f = fault.lock().expect("fault lock").clone();
                let mut out = Bytes::copy_from_slice(&b[..n]);
                let decoded = decode(&b[..n]);
                match (&f, decoded) {
                    (Fault::Drop, _) => continue,
                    (Fault::WrongSource, _) => {
                        let _ = stray.send_to(&out, to).await;
                        continue;
                    }
                    (Fault::WrongRequestId, Some((m, (id, body, vbs)))) => {
                        if let Some(o) = encode(&m, Pdu::from_raw_parts(id.wrapping_add(1), body, vbs)) {
                            out = o;
                        }
                    }
                    (Fault::RebootAfterSet, Some((_, (id, _, _)))) if sets.remove(&id) => reboot(),
                    _ => {}
                }
                let _ = front.send_to(&out, to).await;
                counts.lock().expect("counts lock").answered += 1;
            }
        }
    }
}
