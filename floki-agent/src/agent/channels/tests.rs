//! The core without a kernel: pairing, refusals, leaving on drop, carrier
//! choice, reports matched by id. The carriers are the node's own over a
//! fallback datapath (rings and plain TCP need no privilege), or a fake
//! splice with a kernel record the test controls.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use floki_common::ChannelRecord;
use floki_proto::control::{ClientReport, Hello, Refusal, Role, Transport};

use super::*;
use crate::agent::{
    datapath::{Datapath, SpliceHandle, kernel_support::KernelSupport},
    transport::NodeCarriers,
};

/// The node's carriers without eBPF: shm and tcp only.
fn fallback() -> Arc<Channels> {
    let datapath = Arc::new(Datapath::Fallback {
        reason: "tests run without a kernel".into(),
        kernel: KernelSupport::default(),
    });
    Arc::new(Channels::new(
        Arc::new(NodeCarriers::new(datapath, false)),
        1 << 20,
        16,
    ))
}

/// A splice whose kernel record the test writes.
#[derive(Default)]
struct FakeSplice {
    records: Mutex<HashMap<u32, ChannelRecord>>,
    released: Mutex<Vec<u32>>,
}

impl Carriers for FakeSplice {
    fn set_up(
        &self,
        id: u32,
        name: &str,
        _: &LocalEnd,
        receiver: &LocalEnd,
        _: u64,
    ) -> Result<SetUp, String> {
        self.records
            .lock()
            .unwrap()
            .insert(id, ChannelRecord::named(name));
        Ok(SetUp {
            carrier: Carrier::Splice(SpliceHandle::adopted(id)),
            reason: "fake".into(),
            connect_to: receiver.hello.listen,
            ring: None,
            listener: None,
            eager: false,
        })
    }

    fn record(&self, handle: &SpliceHandle) -> Option<ChannelRecord> {
        self.records.lock().unwrap().get(&handle.channel).copied()
    }

    fn release(&self, handle: &SpliceHandle) {
        self.released.lock().unwrap().push(handle.channel);
    }
}

fn hello(role: Role, shm: bool) -> Hello {
    Hello {
        channel: "c".into(),
        role,
        netns_cookie: None,
        listen: (role == Role::Recv).then(|| SocketAddr::from(([127, 0, 0, 1], 4000))),
        window: None,
        listener_at_pairing: false,
        stream: None,
        shm,
        transport: None,
        live: false,
        store: false,
        secret: None,
        kept_ring: false,
        kept_link: false,
        key_ahead: false,
        holds_link: false,
        eager_hello: false,
        unstarted_link: false,
        run: None,
    }
}

fn local(name: &str, hello: Hello) -> JoinRequest {
    JoinRequest {
        name: name.into(),
        role: hello.role,
        end: EndKind::Local(LocalEnd {
            hello,
            reach: IpAddr::V4(Ipv4Addr::LOCALHOST),
            kept_ring: None,
        }),
        window: None,
    }
}

fn remote(name: &str, role: Role) -> JoinRequest {
    JoinRequest {
        name: name.into(),
        role,
        end: EndKind::Remote(Carrier::LinkHanded(LinkEnd {
            role,
            peer_node: "node-b".into(),
            store: false,
            kept: Default::default(),
            lent: Default::default(),
        })),
        window: Some(1 << 20),
    }
}

/// A receiver, then a sender, joined to channel `name` (`shm`: both take a
/// ring).
fn paired(channels: &Arc<Channels>, name: &str, shm: bool) -> (Joined, Joined) {
    let rx = channels.join(local(name, hello(Role::Recv, shm))).unwrap();
    let tx = channels.join(local(name, hello(Role::Send, shm))).unwrap();
    (rx, tx)
}

fn done(bytes: u64) -> ClientReport {
    ClientReport::Done {
        ok: true,
        bytes,
        error: None,
    }
}

fn view(channels: &Channels, id: u32) -> ChannelView {
    channels
        .snapshot()
        .0
        .into_iter()
        .find(|view| view.id == id)
        .expect("listed")
}

#[tokio::test]
async fn whichever_end_comes_first_both_learn_the_same_part() {
    let channels = fallback();
    for receiver_first in [true, false] {
        let name = format!("first-{receiver_first}");
        let (first, second) = if receiver_first {
            (hello(Role::Recv, false), hello(Role::Send, false))
        } else {
            (hello(Role::Send, false), hello(Role::Recv, false))
        };
        let waiting = channels.join(local(&name, first)).unwrap();
        let Pairing::Later(wait) = waiting.pairing else {
            panic!("the first end waits");
        };
        assert_eq!(
            view(&channels, waiting.membership.id()).phase,
            Phase::Waiting
        );
        let joined = channels.join(local(&name, second)).unwrap();
        assert_eq!(joined.membership.id(), waiting.membership.id());
        let Pairing::Now(mine) = joined.pairing else {
            panic!("the second end pairs at once");
        };
        let theirs = wait.await.unwrap().unwrap();
        assert_eq!(mine.key, theirs.key);
        assert_eq!(mine.transport, Transport::Tcp);
        let sender_part = if receiver_first { &mine } else { &theirs };
        assert_eq!(sender_part.connect_to, Some(([127, 0, 0, 1], 4000).into()));
        assert_eq!(view(&channels, joined.membership.id()).phase, Phase::Active);
    }
}

#[tokio::test]
async fn two_ends_that_take_a_ring_get_one_and_its_bytes_show() {
    let channels = fallback();
    let (rx, tx) = paired(&channels, "ring", true);
    let Pairing::Now(paired) = tx.pairing else {
        panic!("paired");
    };
    assert_eq!(paired.transport, Transport::Shm);
    let Some(RingPart::Handed(memory, peer)) = paired.ring else {
        panic!("the sender's half of a new ring");
    };
    let mut writer = floki_proto::ring::RingWriter::open(memory, peer).unwrap();
    assert_eq!(writer.try_write(&[1; 1000]), Ok(1000));
    assert_eq!(view(&channels, tx.membership.id()).bytes, 1000);
    drop(rx);
}

#[test]
fn a_second_end_of_the_same_role_or_a_third_end_is_busy() {
    let channels = fallback();
    let _sender = channels
        .join(local("busy", hello(Role::Send, false)))
        .unwrap();
    let refused = channels.join(local("busy", hello(Role::Send, false)));
    assert_eq!(refused.err().unwrap().0, Refusal::Busy);
    let _receiver = channels
        .join(local("busy", hello(Role::Recv, false)))
        .unwrap();
    let refused = channels.join(local("busy", hello(Role::Recv, false)));
    assert_eq!(refused.err().unwrap().0, Refusal::Busy);
    let _remote = channels.join(remote("far", Role::Send)).unwrap();
    let refused = channels.join(remote("far", Role::Send));
    assert_eq!(refused.err().unwrap().0, Refusal::Busy);
}

#[tokio::test]
async fn ends_that_cannot_agree_on_a_transport_are_both_refused() {
    let channels = fallback();
    let mut insists = hello(Role::Recv, true);
    insists.transport = Some(Transport::Shm);
    let waiting = channels.join(local("mismatch", insists)).unwrap();
    let refused = channels.join(local("mismatch", hello(Role::Send, false)));
    assert_eq!(refused.err().unwrap().0, Refusal::TransportUnavailable);
    let Pairing::Later(wait) = waiting.pairing else {
        panic!("waited");
    };
    let told = wait.await.unwrap().err().unwrap();
    assert_eq!(told.0, Refusal::TransportUnavailable);
    assert!(told.1.contains("sender cannot"), "{}", told.1);
    assert_eq!(channels.live(), 0, "the name is free again");
}

#[test]
fn a_waiting_end_that_leaves_frees_the_name() {
    let channels = fallback();
    let waiting = channels
        .join(local("gone", hello(Role::Send, false)))
        .unwrap();
    drop(waiting);
    assert_eq!(channels.live(), 0);
    assert!(
        channels
            .join(local("gone", hello(Role::Send, false)))
            .is_ok()
    );
}

#[test]
fn a_panicking_session_still_leaves() {
    let channels = fallback();
    let (rx, tx) = paired(&channels, "panic", false);
    let id = tx.membership.id();
    let session = std::thread::spawn(move || {
        let _membership = tx.membership;
        panic!("a session bug");
    });
    assert!(session.join().is_err());
    rx.membership.report(done(7));
    drop(rx);
    let finished = view(&channels, id);
    assert_eq!(finished.phase, Phase::Done, "{finished:?}");
    assert_eq!(channels.live(), 0);
}

#[test]
fn one_verified_end_makes_the_channel_done_silence_fails_it() {
    let channels = fallback();
    let (rx, tx) = paired(&channels, "ok", false);
    let id = tx.membership.id();
    tx.membership.report(done(42));
    drop(tx);
    assert_eq!(
        view(&channels, id).phase,
        Phase::Active,
        "the receiver is still there"
    );
    drop(rx);
    let finished = view(&channels, id);
    assert_eq!((finished.phase, finished.stream_bytes), (Phase::Done, 42));

    let (rx, tx) = paired(&channels, "silent", false);
    let id = tx.membership.id();
    drop((tx, rx));
    let failed = view(&channels, id);
    assert_eq!(failed.phase, Phase::Failed);
    assert!(failed.error.unwrap().contains("without reporting"));
    let (_, totals) = channels.snapshot();
    assert_eq!((totals.done, totals.failed), (1, 1));
}

#[test]
fn reports_of_an_old_channel_never_touch_a_new_one_of_the_same_name() {
    let channels = fallback();
    let (old_rx, old_tx) = paired(&channels, "reused", false);
    let old = old_tx.membership.id();
    old_tx.membership.report(done(1));
    drop(old_tx);
    // The old receiver verified the stream and is still connected: the old
    // channel is over and its name free.
    old_rx.membership.report(done(1));
    assert_eq!(view(&channels, old).phase, Phase::Done);
    let (new_rx, new_tx) = paired(&channels, "reused", false);
    let new = new_tx.membership.id();
    assert_ne!(new, old);
    // What the old end says or does now concerns only its own channel.
    old_rx.membership.report(ClientReport::Done {
        ok: false,
        bytes: 0,
        error: Some("a late word".into()),
    });
    drop(old_rx);
    assert_eq!(view(&channels, new).phase, Phase::Active);
    new_tx.membership.report(done(9));
    drop((new_tx, new_rx));
    let finished = view(&channels, new);
    assert_eq!(finished.phase, Phase::Done, "{finished:?}");
    assert_eq!(view(&channels, old).phase, Phase::Done);
}

#[tokio::test(start_paused = true)]
async fn an_end_that_comes_while_its_name_is_finishing_waits_for_the_previous_stream() {
    let channels = fallback();
    let (old_rx, old_tx) = paired(&channels, "again", false);
    // The receiver verified the stream; the sender's report is on its way.
    old_rx.membership.report(done(5));
    let refused = channels.join(local("again", hello(Role::Recv, false)));
    let (refusal, message) = refused.err().expect("busy while finishing");
    assert_eq!(refusal, Refusal::Busy);
    assert!(message.contains("its sender has not"), "{message}");
    // Waiting, the next receiver joins once the old sender reports.
    let next = tokio::spawn({
        let channels = channels.clone();
        async move {
            channels
                .join_when_free(local("again", hello(Role::Recv, false)))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!next.is_finished(), "joined before the old stream was over");
    old_tx.membership.report(done(5));
    let next = next
        .await
        .unwrap()
        .expect("joins once the old stream is over");
    assert_ne!(next.membership.id(), old_tx.membership.id());
    assert!(matches!(next.pairing, Pairing::Later(_)));
    // An old stream that never finishes: refused after the wait, clearly.
    let (_stuck_rx, stuck_tx) = paired(&channels, "stuck", false);
    stuck_tx.membership.report(done(1));
    let refused = channels
        .join_when_free(local("stuck", hello(Role::Send, false)))
        .await;
    let (refusal, message) = refused.err().expect("busy after the wait");
    assert_eq!(refusal, Refusal::Busy);
    assert!(message.contains("its receiver has not"), "{message}");
}

#[test]
fn a_remote_end_is_active_at_once_and_its_peer_reports_elsewhere() {
    let channels = fallback();
    let joined = channels.join(remote("w/e/p->c", Role::Send)).unwrap();
    assert!(matches!(joined.pairing, Pairing::Elsewhere));
    let id = joined.membership.id();
    let active = view(&channels, id);
    assert_eq!(active.phase, Phase::Active);
    assert_eq!(active.peer_node.as_deref(), Some("node-b"));
    assert_eq!(
        active.reason.as_deref(),
        Some("the other end is on node node-b")
    );
    joined.membership.report(done(5));
    assert_eq!(view(&channels, id).phase, Phase::Done);
}

#[test]
fn a_splice_shows_the_kernels_bytes_and_is_released_with_its_channel() {
    let carriers = Arc::new(FakeSplice::default());
    let channels = Arc::new(Channels::new(carriers.clone(), 1 << 20, 16));
    let (rx, tx) = paired(&channels, "spliced", false);
    let id = tx.membership.id();
    carriers.records.lock().unwrap().get_mut(&id).unwrap().bytes[0] = 4096;
    let spliced = view(&channels, id);
    assert_eq!(spliced.transport, Some(Transport::Splice));
    assert_eq!((spliced.bytes, spliced.kernel_bytes), (4096, Some(4096)));
    tx.membership.report(done(4000));
    drop((tx, rx));
    assert_eq!(*carriers.released.lock().unwrap(), vec![id]);
}

#[test]
fn a_splice_the_kernel_never_carried_is_reported_as_tcp() {
    let carriers = Arc::new(FakeSplice::default());
    let channels = Arc::new(Channels::new(carriers, 1 << 20, 16));
    let (rx, tx) = paired(&channels, "outside", false);
    rx.membership.report(ClientReport::Progress { bytes: 100 });
    let view = view(&channels, tx.membership.id());
    assert_eq!(view.transport, Some(Transport::Tcp));
    assert!(view.note.unwrap().contains("not spliced"));
}

#[tokio::test]
async fn closing_refuses_waiting_ends_and_new_ones() {
    let channels = fallback();
    let waiting = channels
        .join(local("late", hello(Role::Send, false)))
        .unwrap();
    channels.close();
    let Pairing::Later(wait) = waiting.pairing else {
        panic!("waited");
    };
    assert_eq!(wait.await.unwrap().err().unwrap().0, Refusal::ShuttingDown);
    let refused = channels.join(local("new", hello(Role::Send, false)));
    assert_eq!(refused.err().unwrap().0, Refusal::ShuttingDown);
}

#[tokio::test]
async fn a_deleted_workflows_waiting_ends_are_refused() {
    let channels = fallback();
    let mine = channels
        .join(local("wf/a", hello(Role::Send, false)))
        .unwrap();
    let other = channels
        .join(local("other/a", hello(Role::Send, false)))
        .unwrap();
    channels.refuse_waiting("wf/");
    let Pairing::Later(wait) = mine.pairing else {
        panic!("waited");
    };
    assert_eq!(wait.await.unwrap().err().unwrap().0, Refusal::NotAllowed);
    assert_eq!(channels.live(), 1);
    drop(other);
}

#[test]
fn subscribers_hear_pairings_and_ends() {
    let channels = fallback();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = heard.clone();
    channels.subscribe(move |event| {
        log.lock().unwrap().push(match event {
            ChannelEvent::Paired { transport, .. } => format!("paired {transport}"),
            ChannelEvent::Finished(view) => format!("finished {:?}", view.phase),
        });
    });
    let (rx, tx) = paired(&channels, "heard", false);
    drop((tx, rx));
    assert_eq!(
        *heard.lock().unwrap(),
        vec!["paired tcp".to_owned(), "finished Failed".to_owned()]
    );
}
