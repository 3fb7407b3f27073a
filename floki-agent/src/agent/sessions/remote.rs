//! An end whose peer is on another node: the stream's prepared link between
//! the two agents carries it. A function on the Unix socket is handed that
//! link; otherwise the agent relays its data connection over it.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use floki_proto::{
    KEY_LEN,
    control::{
        AgentMessage, ClientReport, ControlStream, Handoff, Hello, Refusal, Role, Transport,
        encode_key, write_message, write_messages,
    },
    frame::{FrameKind, control_frame},
    handoff::send_socket,
};
use tokio::{
    net::{TcpStream, UnixStream},
    task::JoinHandle,
    time::Sleep,
};
use tokio_util::either::Either;
use tracing::{debug, info, warn};

use super::{
    HeldLink, Holding, Kept, ReportReader, WhileWaiting, closed,
    handshake::refuse_quietly,
    is_unix,
    local::{self, Local},
    reports, stored,
};
use crate::agent::{
    Agent,
    channels::{Carrier, EndKind, JoinRequest, LinkEnd, Membership},
    control::{
        links::{self, ConsumerHold, ForConsumer, Parked, Prepared},
        peers::protocol::LinkStart,
        workflows::Resolved,
    },
    transport::{self, CarrierKind, Placement, link, relay},
};
use crate::workflow::StreamId;

/// Serves the end on this node of a cross-node stream; a consumer may come
/// with the stream's started link, which it took when it said hello. A
/// function on the Unix socket is handed the link, and its connection comes
/// back once its end said `done`: it may carry the function's next request,
/// and the function may keep the link for the stream's next use.
pub async fn serve(
    connection: Kept,
    hello: Hello,
    resolved: Resolved,
    started: Option<Prepared>,
    agent: &Agent,
) -> Option<Kept> {
    let Kept {
        stream: mut control,
        mut reader,
        // A ring is kept for a stream on this node only.
        ring: _,
        link: held,
    } = connection;
    // A link taken but not used goes back, for the consumer's next try or
    // the store.
    let put_back = |started: Option<Prepared>| {
        if let Some(prepared) = started {
            agent.links.put_back(&resolved.stream, prepared);
        }
    };
    let role = hello.role;
    let name = resolved.stream.to_string();
    let window = resolved.edge.buffer;
    let placement = Placement::CrossNode {
        end: &hello,
        unix: is_unix(&control),
        peer_node: &resolved.peer_node,
    };
    let plan = match transport::plan(placement, agent.datapath.is_ebpf()) {
        Ok(plan) => plan,
        Err(message) => {
            let refusal = Refusal::TransportUnavailable;
            refuse_quietly(agent, &mut control, refusal, message).await;
            return None;
        }
    };
    // The link the function kept from this stream's last use, if its hello
    // says it still holds it: the producer's side starts it again (if it is
    // still sound) instead of the spare; the consumer's side is told when
    // the producer started that one. A link held for another stream (or
    // that the function dropped) is closed only once this stream is under
    // way: its close wakes the other node's agent, which should not be in
    // this stream's set-up.
    let (kept_send, kept_recv, _stale) = match held {
        Some(HeldLink::Sent(holding))
            if hello.kept_link
                && role == Role::Send
                && holding.stream == resolved.stream
                && links::reusable(&holding.link.conn, false) =>
        {
            (Some(holding.link), None, None)
        }
        Some(HeldLink::Received(id)) if hello.kept_link && role == Role::Recv => {
            (None, Some(id), None)
        }
        stale => (None, None, stale),
    };
    let relayed = Arc::new(AtomicU64::new(0));
    let end = LinkEnd {
        role,
        peer_node: resolved.peer_node.clone(),
        store: hello.store,
        kept: Arc::default(),
        lent: Arc::default(),
    };
    let kept_flag = end.kept.clone();
    let lent_flag = end.lent.clone();
    let carrier = match plan.carrier {
        CarrierKind::LinkHanded => Carrier::LinkHanded(end),
        _ => Carrier::LinkRelayed {
            end,
            relayed: relayed.clone(),
            splice: None,
        },
    };
    let request = JoinRequest {
        name: name.clone(),
        role,
        end: EndKind::Remote(carrier),
        window: Some(window),
    };
    let membership = match agent.channels.join_when_free(request).await {
        Ok(joined) => joined.membership,
        Err((refusal, message)) => {
            put_back(started);
            refuse_quietly(agent, &mut control, refusal, message).await;
            return None;
        }
    };
    let accepted = AgentMessage::Accepted {
        channel_id: membership.id(),
        node: agent.node.clone(),
        window: Some(window),
        socket: None,
    };
    // How a function on the Unix socket is handed the link.
    let end = HandedEnd {
        hello: &hello,
        name: &name,
        window,
        stream: &resolved.stream,
        peer_node: &resolved.peer_node,
        agent,
    };
    // A producer that kept the stream's link is paired at once, over it.
    let control = match (control, kept_send) {
        (Either::Right(unix), Some(parked)) => {
            kept_flag.store(true, Ordering::Relaxed);
            return end
                .serve_kept(unix, reader, membership, accepted, parked)
                .await;
        }
        (control, _) => control,
    };
    // A consumer on the Unix socket that waits for its stream to start is
    // lent one of the stream's links and reads the start itself: the
    // stream's first bytes wake it alone, not this agent first and it
    // after a hand-over (docs/PROTOCOL.md, "Lent links").
    let lendable = role == Role::Recv
        && started.is_none()
        && hello.unstarted_link
        && !hello.store
        && kept_recv.is_none()
        && is_unix(&control);
    let mut control = match control {
        Either::Right(unix) if lendable => match agent.links.lend_armed(&resolved.stream).await {
            Some(armed) => {
                lent_flag.store(true, Ordering::Relaxed);
                return end
                    .lend(unix, reader, membership, Some(accepted), armed)
                    .await;
            }
            None => Either::Right(unix),
        },
        control => control,
    };
    // So is a consumer on the Unix socket whose link already started: it
    // hears `accepted` with `paired`.
    let mut untold = None;
    if role == Role::Recv && started.is_some() && is_unix(&control) {
        untold = Some(accepted);
    } else if write_message(&mut control, &accepted).await.is_err() {
        put_back(started);
        return None;
    }
    let prepared = match role {
        // Producer side: the connection this agent keeps to the consumer's;
        // if there is none (the consumer's node is unreachable), the store
        // of this node may take the stream.
        Role::Send => {
            let storable = stored::storable_here(agent, &hello, &resolved);
            match producer_link(
                &mut control,
                &mut reader,
                agent,
                &resolved,
                storable.is_some(),
            )
            .await
            {
                Link::Prepared(prepared) => Some(prepared),
                Link::Gone => None,
                Link::Unreachable => {
                    drop(membership);
                    let meeting = storable?;
                    let here = Local {
                        window: Some(window),
                        storable: Some(meeting),
                        accepted: true,
                        store_now: true,
                        again: false,
                    };
                    let mut hello = hello;
                    hello.channel = name;
                    // Its connection closes after `done` (no next request).
                    local::serve(Kept::new(control), hello, here, agent).await;
                    return None;
                }
            }
        }
        // Consumer side: a connection the producer's agent started; the
        // store's end gets the one it claimed.
        Role::Recv if started.is_some() => started,
        Role::Recv if hello.store => agent.links.take_held(&resolved.stream),
        Role::Recv => {
            let found = tokio::select! {
                found = agent.links.for_consumer(&resolved.stream, lendable) => found,
                () = closed(&mut control, &mut reader) => return None,
            };
            match (found, control) {
                (ForConsumer::Started(prepared), unchanged) => {
                    control = unchanged;
                    Some(prepared)
                }
                (ForConsumer::Unstarted(armed), Either::Right(unix)) => {
                    lent_flag.store(true, Ordering::Relaxed);
                    return end.lend(unix, reader, membership, None, armed).await;
                }
                // Only a consumer on the Unix socket is lent a link.
                (ForConsumer::Unstarted(armed), Either::Left(_)) => {
                    agent.links.rearm(resolved.stream.clone(), armed);
                    return None;
                }
            }
        }
    };
    let prepared = prepared?;
    // The function holds this very link already: it is not handed again.
    let reused = role == Role::Recv && kept_recv == Some(prepared.id);
    kept_flag.store(reused, Ordering::Relaxed);
    let control = match control {
        Either::Right(unix) => {
            let handed = Handed {
                // The store's ends are the agent's own, one connection per
                // stream.
                again: !hello.store,
                reused,
                accepted: untold,
                unstarted: false,
            };
            return end.serve(unix, reader, membership, prepared, handed).await;
        }
        Either::Left(tcp) => tcp,
    };
    let end = RelayedEnd {
        hello: &hello,
        name: &name,
        window,
        membership: &membership,
        agent,
    };
    match end.start(control, prepared, relayed).await {
        Ok((control, relay)) => {
            drop(reports(Either::Left(control), &membership, &name, reader, false).await);
            // The end stays a member until its relay is done. The channel
            // may be over before then (its consumer reported before its ack
            // crossed the relay): a stopping agent waits for the relay on
            // its own (`Agent::relays`).
            close_relay_after(relay, &name).await;
            drop(membership);
        }
        Err(err) => warn!(channel = %name, %err, "cross-node stream not started"),
    }
    None
}

/// How long a relay may outlive its end's control connection: a stream
/// that ended well has finished moving by then.
const RELAY_GRACE: Duration = Duration::from_secs(2);

/// The end hung up (finished, failed or died): its relay gets
/// [`RELAY_GRACE`] to finish, then is closed, so that the other node sees
/// the stream break instead of waiting for bytes that will never come (a
/// killed producer whose data connection the kernel redirects into the
/// link is not always seen going).
async fn close_relay_after(mut relay: JoinHandle<()>, name: &str) {
    if tokio::time::timeout(RELAY_GRACE, &mut relay).await.is_err() {
        relay.abort();
        info!(channel = %name, "the end left and its relay was still open: closed, so that the other node sees the stream end");
    }
}

/// What a producer's session got while waiting for the stream's link.
enum Link {
    /// The link.
    Prepared(Prepared),
    /// The producer hung up.
    Gone,
    /// No link while the producer had nothing more to buffer, for the
    /// store's grace period (at once if it is finishing), and the last
    /// attempt to open one failed: the consumer's node is unreachable.
    Unreachable,
}

/// Waits for the prepared link of the producer's stream. A producer that
/// may be stored (`storable`) waits only as long as a same-node producer
/// would wait for its consumer, and only while the consumer's node cannot
/// be reached.
async fn producer_link(
    control: &mut ControlStream,
    reader: &mut ReportReader,
    agent: &Agent,
    resolved: &Resolved,
    storable: bool,
) -> Link {
    let mut grace: Option<Pin<Box<Sleep>>> = None;
    let take = agent.links.take(&resolved.stream);
    tokio::pin!(take);
    let mut said = 0;
    loop {
        tokio::select! {
            prepared = &mut take => return match prepared {
                Ok(prepared) => Link::Prepared(prepared),
                Err(_) => Link::Gone,
            },
            report = reader.next_while_waiting(control, &mut said) => match report {
                WhileWaiting::Waiting { finishing } if storable => {
                    let wait = if finishing { Duration::ZERO } else { agent.store.config().grace };
                    if finishing || grace.is_none() {
                        grace = Some(Box::pin(tokio::time::sleep(wait)));
                    }
                }
                WhileWaiting::Waiting { .. } => {}
                WhileWaiting::Gone => return Link::Gone,
            },
            () = async { grace.as_mut().expect("checked").await }, if grace.is_some() => {
                // The keeper may only be opening the next connection (the
                // last one was just used): the node is reachable, the link
                // is coming; look again a grace period later.
                if !agent.links.is_unreachable(&resolved.stream) {
                    grace = Some(Box::pin(tokio::time::sleep(agent.store.config().grace)));
                    continue;
                }
                warn!(stream = %resolved.stream, peer = %resolved.peer_node,
                    "no link to the consumer's node: the stream is stored on this node");
                return Link::Unreachable;
            }
        }
    }
}

/// How a link goes to the function on the Unix socket.
struct Handed {
    /// The function may send its next request on its connection after its
    /// `done`, and keep the link for the stream's next use.
    again: bool,
    /// The function kept this link from the stream's last use: nothing is
    /// handed over (`"socket":"kept_link"`).
    reused: bool,
    /// Its `accepted`, if it was paired at once and not told yet: it goes
    /// in the same write as `paired`.
    accepted: Option<AgentMessage>,
    /// A consumer lent the link before its start: it reads the start
    /// itself.
    unstarted: bool,
}

/// Hands the agents' link to the function on the Unix socket: its bytes then
/// go between the function's socket and the other node's, never through
/// this agent. The producer's side starts the link first. This agent keeps
/// its own descriptor of the link until the end leaves: a verified stream's
/// link may carry the stream's next use.
async fn hand_over(
    unix: &mut UnixStream,
    hello: &Hello,
    prepared: &Prepared,
    window: u64,
    handed: Handed,
) -> Result<(), String> {
    let key_sent = hello.role == Role::Send && hello.key_ahead;
    if hello.role == Role::Send {
        relay::start(&prepared.conn, &link_start(hello, &prepared.key))
            .await
            .map_err(|e| format!("starting the link: {e}"))?;
    }
    let paired = link_paired(&prepared.key, window, &handed, key_sent);
    write_messages(
        unix,
        &handed.accepted.iter().chain([&paired]).collect::<Vec<_>>(),
    )
    .await
    .map_err(|e| e.to_string())?;
    if handed.reused {
        return Ok(());
    }
    send_socket(unix, std::os::fd::AsFd::as_fd(&prepared.conn))
        .await
        .map_err(|e| format!("handing the link over: {e}"))
}

/// What starts the link for the stream of the producer that said `hello`:
/// its [`LinkStart`], then, if the producer asked for it (`key_ahead`), the
/// pairing key's hello frame, which the consumer reads first, as it would
/// the producer's.
fn link_start(hello: &Hello, key: &[u8; KEY_LEN]) -> Vec<u8> {
    let mut bytes = LinkStart::of(hello).bytes();
    if hello.key_ahead {
        bytes.extend_from_slice(&control_frame(FrameKind::Hello, key));
    }
    bytes
}

/// The `paired` of an end handed the link (or told to use the one it kept);
/// `key_sent`: the link's start carried the pairing key.
fn link_paired(key: &[u8; KEY_LEN], window: u64, handed: &Handed, key_sent: bool) -> AgentMessage {
    AgentMessage::Paired {
        transport: Transport::Tcp,
        peer: None,
        key: encode_key(key),
        window,
        socket: Some(if handed.reused {
            Handoff::KeptLink
        } else {
            Handoff::Connection
        }),
        stored: false,
        again: handed.again,
        link: handed.again,
        key_sent,
        eager: false,
        unstarted: handed.unstarted,
    }
}

/// A function on the Unix socket, which is handed the link.
struct HandedEnd<'a> {
    hello: &'a Hello,
    name: &'a str,
    window: u64,
    stream: &'a StreamId,
    peer_node: &'a str,
    agent: &'a Agent,
}

impl HandedEnd<'_> {
    /// What the connection keeps of the link its function holds.
    fn holding(&self, link: Parked, ready: Option<ConsumerHold>) -> Box<Holding> {
        Box::new(Holding {
            stream: self.stream.clone(),
            link,
            peer_node: self.peer_node.to_owned(),
            _ready: ready,
        })
    }

    /// A consumer's link, held by it: the stream stays ready meanwhile.
    fn lent(&self, link: Parked) -> HeldLink {
        let ready = self.agent.links.held_by_consumer(self.stream);
        HeldLink::Lent(self.holding(link, Some(ready)))
    }

    /// Hands the link over as `handed` says and passes the end's reports
    /// until it hangs up or says `done`; its connection back if it may
    /// carry another request, with the link if the stream went across
    /// verified.
    async fn serve(
        self,
        mut unix: UnixStream,
        reader: ReportReader,
        membership: Membership,
        prepared: Prepared,
        handed: Handed,
    ) -> Option<Kept> {
        let again = handed.again;
        let id = prepared.id;
        let handed = hand_over(&mut unix, self.hello, &prepared, self.window, handed).await;
        let parked = match handed.and_then(|()| {
            prepared
                .park()
                .map_err(|e| format!("holding the link: {e}"))
        }) {
            Ok(parked) => parked,
            Err(err) => {
                warn!(channel = %self.name, %err, "cross-node stream not started");
                return None;
            }
        };
        let (control, reader, done) =
            reports(Either::Right(unix), &membership, self.name, reader, again).await;
        drop(membership);
        // A verified stream leaves its link sound and silent: it may carry
        // the stream's next use. Otherwise this agent's descriptor goes, and
        // the link with it once the function's.
        let link = match (done?, self.hello.role) {
            (true, Role::Send) => Some(HeldLink::Sent(self.holding(parked, None))),
            // A consumer that reads its next start itself keeps the link
            // to itself until it asks for something else or goes.
            (true, Role::Recv) if self.hello.holds_link => Some(self.lent(parked)),
            (true, Role::Recv) => {
                if let Ok(prepared) = parked.unpark() {
                    self.agent.links.rearm(self.stream.clone(), prepared);
                }
                Some(HeldLink::Received(id))
            }
            (false, _) => None,
        };
        Some(Kept {
            stream: control,
            reader,
            ring: None,
            link,
        })
    }

    /// Serves a producer that kept this stream's link: the link is started
    /// where it is parked, out of the reactor, and `accepted` and `paired`
    /// go in one write, so the function finds its pairing with its
    /// acceptance. A link that cannot start closes the connection before
    /// any answer: the function asks again on a new one, and gets a fresh
    /// link (docs/PROTOCOL.md, "Kept connections").
    async fn serve_kept(
        self,
        mut unix: UnixStream,
        reader: ReportReader,
        membership: Membership,
        accepted: AgentMessage,
        parked: Parked,
    ) -> Option<Kept> {
        // The store's ends are the agent's own, one connection per stream.
        let again = !self.hello.store;
        let handed = Handed {
            again,
            reused: true,
            accepted: None,
            unstarted: false,
        };
        let paired = link_paired(parked.key(), self.window, &handed, self.hello.key_ahead);
        let start = link_start(self.hello, parked.key());
        if let Err(err) = relay::start_parked(&parked.conn, &start) {
            warn!(channel = %self.name, %err, "the kept link did not start; the producer gets a fresh one");
            return None;
        }
        write_messages(&mut unix, &[accepted, paired]).await.ok()?;
        let (control, reader, done) =
            reports(Either::Right(unix), &membership, self.name, reader, again).await;
        drop(membership);
        // A verified stream leaves the link sound and silent, for the next.
        let link = done?.then(|| HeldLink::Sent(self.holding(parked, None)));
        Some(Kept {
            stream: control,
            reader,
            ring: None,
            link,
        })
    }

    /// Lends a consumer that waits for its stream a link of the stream not
    /// started yet (`paired` says `unstarted`, with `accepted` in the same
    /// write): the consumer reads the start itself, and this agent passes
    /// its reports. Should the stream start on another link (a producer
    /// that kept that one), the consumer is told `started_elsewhere` and
    /// gives the lent link back unread (`link_unread`): the link goes back
    /// to this agent's watch, the end leaves its channel, and the
    /// consumer's next hello on the connection finds the started link.
    async fn lend(
        self,
        mut unix: UnixStream,
        mut reader: ReportReader,
        membership: Membership,
        accepted: Option<AgentMessage>,
        armed: Prepared,
    ) -> Option<Kept> {
        let handed = Handed {
            again: true,
            reused: false,
            accepted,
            unstarted: true,
        };
        if let Err(err) = hand_over(&mut unix, self.hello, &armed, self.window, handed).await {
            warn!(channel = %self.name, %err, "a link not lent; watched again");
            self.agent.links.rearm(self.stream.clone(), armed);
            return None;
        }
        let lent = match armed.park() {
            Ok(parked) => self.lent(parked),
            Err(err) => {
                warn!(channel = %self.name, %err, "a lent link not held; closed");
                return None;
            }
        };
        let mut control = Either::Right(unix);
        let mut watching = true;
        let done = loop {
            let report = tokio::select! {
                report = reader.next(&mut control) => report,
                () = self.agent.links.started_untaken(self.stream), if watching => {
                    watching = false;
                    match write_message(&mut control, &AgentMessage::StartedElsewhere).await {
                        Ok(()) => continue,
                        Err(_) => break None,
                    }
                }
            };
            match report {
                Ok(Some(ClientReport::LinkUnread)) => {
                    membership.withdraw();
                    return Some(Kept {
                        stream: control,
                        reader,
                        ring: None,
                        link: lent.release(self.agent),
                    });
                }
                Ok(Some(report @ ClientReport::Done { ok, .. })) => {
                    membership.report(report);
                    break Some(ok);
                }
                Ok(Some(report)) => {
                    // It reads the lent link: the stream is under way there.
                    watching = false;
                    membership.report(report);
                }
                Ok(None) => break None,
                Err(err) => {
                    debug!(channel = %self.name, %err, "control connection ended with an error");
                    break None;
                }
            }
        };
        drop(membership);
        let link = match done {
            // A consumer that went gives the link back: unstarted, it waits
            // for its start again; cut, it is closed there.
            None => {
                lent.release(self.agent);
                return None;
            }
            Some(true) if self.hello.holds_link => Some(lent),
            Some(true) => lent.release(self.agent),
            Some(false) => None,
        };
        Some(Kept {
            stream: control,
            reader,
            ring: None,
            link,
        })
    }
}

/// A function on the TCP port whose stream the agent relays over the link.
struct RelayedEnd<'a> {
    hello: &'a Hello,
    name: &'a str,
    window: u64,
    membership: &'a Membership,
    agent: &'a Agent,
}

impl RelayedEnd<'_> {
    /// The producer connects to a listener of the agent's, the agent to
    /// the consumer's; then the relay runs. Returns the control connection,
    /// for the end's reports.
    async fn start(
        &self,
        mut control: TcpStream,
        mut prepared: Prepared,
        relayed: Arc<AtomicU64>,
    ) -> Result<(TcpStream, JoinHandle<()>), String> {
        let (agent, id) = (self.agent, self.membership.id());
        let key = encode_key(&prepared.key);
        let paired = |peer| AgentMessage::Paired {
            transport: Transport::Tcp,
            peer,
            key: key.clone(),
            window: self.window,
            socket: None,
            stored: false,
            again: false,
            link: false,
            key_sent: false,
            eager: false,
            unstarted: false,
        };
        let (producer, consumer) = match self.hello.role {
            Role::Send => {
                let ip = control.local_addr().map_err(|e| e.to_string())?.ip();
                let side = link::producer_side(
                    &agent.datapath,
                    id,
                    self.hello,
                    ip,
                    &prepared.conn,
                    self.window,
                )
                .await?;
                if let Some(handle) = side.splice.clone() {
                    self.membership.attach_splice(handle);
                }
                write_message(&mut control, &paired(Some(side.connect_to)))
                    .await
                    .map_err(|e| e.to_string())?;
                let start = LinkStart::of(self.hello);
                (
                    side.accept(&mut prepared.conn, &start).await?,
                    prepared.conn,
                )
            }
            Role::Recv => {
                let netns = agent.netns_cookie;
                let (listen, splice) =
                    link::consumer_side(&agent.datapath, id, self.name, netns, self.hello)?;
                if let Some(handle) = splice {
                    self.membership.attach_splice(handle);
                }
                write_message(&mut control, &paired(None))
                    .await
                    .map_err(|e| e.to_string())?;
                (prepared.conn, link::connect_consumer(listen).await?)
            }
        };
        let relay = link::spawn_relay(
            &agent.relays,
            self.name.to_owned(),
            producer,
            consumer,
            relayed,
        );
        Ok((control, relay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::control::peers::protocol::START_LIVE;

    fn producer(key_ahead: bool) -> Hello {
        let json =
            format!(r#"{{"channel":"c","role":"send","live":true,"key_ahead":{key_ahead}}}"#);
        serde_json::from_str(&json).expect("a hello")
    }

    #[test]
    fn the_links_start_carries_the_key_only_for_a_producer_that_asked() {
        let key = [0x5a; KEY_LEN];
        assert_eq!(link_start(&producer(false), &key), [START_LIVE]);
        let mut expected = vec![START_LIVE];
        expected.extend_from_slice(&control_frame(FrameKind::Hello, &key));
        assert_eq!(link_start(&producer(true), &key), expected);
    }
}
