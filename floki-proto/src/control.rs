//! The control connection: a client names a channel and its role, the agent
//! answers and, once both ends are there, pairs them.
//!
//! Wire format: the client first sends the preamble (`FLKI` + version as u16
//! big-endian), then each message in either direction is a u32 big-endian
//! length followed by that many bytes of UTF-8 JSON.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

pub use super::handoff::Handoff;
use super::{MAGIC, MAX_MESSAGE_LEN, ProtocolError, VERSION};

/// A control connection: TCP, or the agent's Unix socket (where the agent can
/// hand sockets over, see [`super::handoff`]).
pub type ControlStream = tokio_util::either::Either<tokio::net::TcpStream, tokio::net::UnixStream>;

/// Which end of a channel a client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The producer: writes the stream.
    Send,
    /// The consumer: reads the stream.
    Recv,
}

impl Role {
    /// The other end.
    pub fn peer(self) -> Self {
        match self {
            Self::Send => Self::Recv,
            Self::Recv => Self::Send,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Send => "sender",
            Self::Recv => "receiver",
        })
    }
}

/// How a channel's bytes travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A ring in shared memory between the two ends (both on this node, on
    /// the agent's Unix socket).
    Shm,
    /// Sender and receiver sockets spliced in the kernel (sockmap redirect).
    Splice,
    /// Plain TCP: no eBPF on this node, or the other end is on another node.
    Tcp,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "shm" => Ok(Self::Shm),
            "splice" => Ok(Self::Splice),
            "tcp" => Ok(Self::Tcp),
            _ => Err(format!("unknown transport {s:?}: use shm, splice or tcp")),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Shm => "shm",
            Self::Splice => "splice",
            Self::Tcp => "tcp",
        })
    }
}

/// What the functions of a workflow edge do with its streams (one per
/// producer and consumer pair).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// One producer, one consumer.
    OneToOne,
    /// One producer; every consumer gets the whole stream.
    Broadcast,
    /// Several producers, one consumer that receives each stream whole and
    /// knows which producer it came from.
    Gather,
    /// Every producer writes partition j to consumer j.
    Shuffle,
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::OneToOne => "one-to-one",
            Self::Broadcast => "broadcast",
            Self::Gather => "gather",
            Self::Shuffle => "shuffle",
        })
    }
}

/// First message of a client: open a channel end, or describe an edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClientRequest {
    /// What an edge of a workflow looks like to one of its functions.
    Describe {
        /// The edge.
        describe: EdgeRef,
    },
    /// How a stream went that the function carried over the link it held,
    /// without asking the agent first (docs/PROTOCOL.md, "Held links"):
    /// told afterwards, on the connection that holds the link, and not
    /// answered.
    Held {
        /// The stream's outcome for this end.
        held: HeldReport,
    },
    /// A consumer that holds its stream's link gives it back to the agent's
    /// watch: the stream's next start came while no receiver of the process
    /// read it. The agent serves that start as any other (the consumer's
    /// next hello, with `kept_link`, finds it); not answered.
    GiveBack {
        /// Always `true`.
        give_back: bool,
    },
    /// Open a channel end.
    Open(Hello),
}

/// A held link's stream, as its end tells it afterwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldReport {
    /// Whether the stream went across complete and verified.
    pub ok: bool,
    /// Payload bytes moved.
    pub bytes: u64,
    /// What went wrong, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A function's place on an edge of a workflow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRef {
    /// Workflow name.
    pub workflow: String,
    /// The token `floki-agent apply` printed.
    pub token: String,
    /// Edge name.
    pub edge: String,
    /// The calling function.
    pub function: String,
}

/// Opens one end of a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Channel name, 1 to 255 bytes of `[A-Za-z0-9._:/-]` (ignored for a
    /// workflow stream, whose name the agent derives).
    #[serde(default)]
    pub channel: String,
    /// Which end this client is.
    pub role: Role,
    /// Cookie of the client's network namespace (`SO_NETNS_COOKIE`); without
    /// it the agent cannot splice and uses plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_cookie: Option<u64>,
    /// Receivers: the address their data listener is bound to, which the
    /// sender will connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Receivers: flow-control window in bytes (the agent's default if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// Unix-socket receivers without `listen`: the agent hands the data
    /// listener over with `paired` instead of `accepted`, so it opens one
    /// only when the pairing needs it (never over a ring).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub listener_at_pairing: bool,
    /// Workflow streams: which edge, which function this is, and its peer.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamRef>,
    /// The client can take a shared-memory ring (`shm`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shm: bool,
    /// A transport the client insists on (experiments); the agent refuses
    /// the channel if it cannot provide it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    /// Senders: wait for the receiver, however long, rather than let the
    /// agent store the stream when the receiver is not there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
    /// This end is the agent's own store (taking a stream in, or serving a
    /// stored one); an agent accepts it only from its own process.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub store: bool,
    /// Plain channels: a secret both ends present; an end pairs only with
    /// an end that presented the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// On a kept connection: the client still holds the ring of its last
    /// channel on it, mapped; the agent may pair this end over it again
    /// (`"socket":"kept_ring"`) if the peer kept the same ring.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept_ring: bool,
    /// On a kept connection: the client still holds the link of its last
    /// stream on it (a workflow stream across nodes, whose `paired` said
    /// `link`); the agent may carry this end's stream over it again
    /// (`"socket":"kept_link"`) if it is the same stream's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept_link: bool,
    /// A sender handed the agents' link (or told to use the one it kept):
    /// the agent may send the pairing key's hello frame on the link itself,
    /// with the link's start, and then says `key_sent` in `paired`. The
    /// sender then does not send it: one segment less across the nodes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key_ahead: bool,
    /// A consumer that keeps the link it is handed after a verified stream
    /// and reads the stream's next start on it itself: its agent leaves the
    /// link with this connection rather than watching it (docs/PROTOCOL.md,
    /// "Held links").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holds_link: bool,
    /// A receiver that takes an eager hello (`frame::HELLO_EAGER`): the
    /// agent may let its sender write the hello and its first data before
    /// this receiver's first credit (`paired` says `eager`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eager_hello: bool,
    /// A consumer that may be handed its stream's link across nodes before
    /// the stream starts on it, and then reads the start itself, as it does
    /// on a link it holds (`paired` says `unstarted`; docs/PROTOCOL.md,
    /// "Lent links").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unstarted_link: bool,
    /// The run this end belongs to (an orchestrator's execution id: Argo's
    /// workflow uid, a Step Functions execution). A stream its producer has
    /// stored keeps it, and a consumer is served only a stored stream of
    /// its own run (its retry still is). Without it, a consumer is served
    /// whatever stream is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

/// A workflow stream: one producer and one consumer of an edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRef {
    /// Workflow name.
    pub workflow: String,
    /// The token `floki-agent apply` printed.
    pub token: String,
    /// Edge name.
    pub edge: String,
    /// This end's function.
    pub function: String,
    /// The other end's function.
    pub peer: String,
}

/// Why the agent refused or dropped a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Not a Floki handshake (bad magic, bad JSON, missing fields).
    BadHandshake,
    /// Another protocol version.
    UnsupportedVersion,
    /// Channel name empty, too long or with characters outside the allowed set.
    BadChannelName,
    /// Receiver without a listening address, window out of range, ...
    BadRequest,
    /// The channel already has an end of this role.
    Busy,
    /// The agent is stopping and takes no new channels.
    ShuttingDown,
    /// Not a channel of a workflow this client may use (unknown workflow,
    /// edge or function, or a wrong token: one answer for all, on purpose).
    NotAllowed,
    /// The function runs on another node: use that node's agent.
    WrongNode,
    /// Only workflow channels are served (`--workflow-channels-only`).
    WorkflowOnly,
    /// The two ends cannot have the transport one of them insists on, or
    /// the agent could set up no carrier for them (no data listener).
    TransportUnavailable,
    /// The stream was stored in the memory of an agent that restarted since:
    /// it is lost (run its producer again).
    StreamLost,
    /// The agent could not set the channel up.
    Internal,
}

/// Messages from the agent to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentMessage {
    /// The hello is valid; the client now waits for its peer.
    Accepted {
        /// Agent-wide id of the channel.
        channel_id: u32,
        /// Node the agent runs on.
        node: String,
        /// The channel's window: a sender may buffer this much before its
        /// peer is there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<u64>,
        /// Unix-socket receivers: a data listener follows (see [`Handoff`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        socket: Option<Handoff>,
    },
    /// Answer to a describe request.
    Edge {
        /// `one-to-one`, `broadcast`, `gather` or `shuffle`.
        pattern: Pattern,
        /// The caller's role on the edge.
        role: Role,
        /// The functions at the other end, in spec order.
        peers: Vec<String>,
        /// The edge's buffer (window per stream).
        buffer: u64,
        /// The agent takes another request on this connection: a client
        /// may keep it for its next channel instead of closing it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        again: bool,
    },
    /// The hello was refused, or a waiting client is dropped. The agent closes
    /// the connection after this message.
    Refused {
        /// Machine-readable reason.
        error: Refusal,
        /// What happened and what to do, for humans.
        message: String,
    },
    /// Both ends are there.
    Paired {
        /// How the bytes will travel.
        transport: Transport,
        /// Senders: where to connect (the receiver's data listener).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<SocketAddr>,
        /// Pairing key, hex: the sender presents it on the data connection.
        key: String,
        /// Flow-control window in bytes.
        window: u64,
        /// Unix-socket clients: the data connection, the ring, or (for a
        /// receiver whose hello said `listener_at_pairing`) the data
        /// listener follows (see [`Handoff`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        socket: Option<Handoff>,
        /// The other end is the agent's store: a sender's stream is stored,
        /// not delivered; a receiver reads a stored stream.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stored: bool,
        /// The agent takes another hello on this connection after this
        /// end's `done` (no preamble): a client may keep the connection for
        /// its next channel instead of closing it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        again: bool,
        /// The connection handed over is the agents' link of a workflow
        /// stream across nodes: after a verified stream the end may keep it
        /// with its control connection (`again`) for the same stream's
        /// next use (its hello says `kept_link`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        link: bool,
        /// The agent sent the pairing key's hello frame on the link, ahead
        /// of the stream (the sender's hello said `key_ahead`): the sender
        /// starts with its first data frame.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        key_sent: bool,
        /// To a sender over a socket whose receiver takes an eager hello:
        /// right after connecting, it may send its hello eager and then
        /// its stream, taking `window` as the receiver's first credit
        /// (docs/PROTOCOL.md, section 2).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        eager: bool,
        /// To a consumer whose hello said `unstarted_link`, handed the
        /// agents' link before the stream started on it: the consumer reads
        /// the start itself, and says `link_unread` if it gives the link up
        /// unread (docs/PROTOCOL.md, "Lent links").
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unstarted: bool,
    },
    /// To a consumer that holds its stream's link (its hello said
    /// `holds_link`): the stream's next use started on another link (a new
    /// producer process, on the spare). The consumer stops waiting on the
    /// link it holds and says hello, which hands it the started one
    /// (docs/PROTOCOL.md, "Held links").
    StartedElsewhere,
}

/// Messages from a client to the agent after the hello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClientReport {
    /// A sender not paired yet has nothing more to buffer (its window is
    /// full, or it is finishing): the agent may store its stream.
    Waiting {
        /// The sender is finishing: its whole stream is buffered, and the
        /// agent stores it at once rather than after its grace period.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        finishing: bool,
    },
    /// A consumer handed its stream's link unstarted (`paired` said
    /// `unstarted`) gives it back unread: the agent said the stream started
    /// on another link, or the link closed before any start. The agent
    /// takes the link back and the end leaves its channel; the consumer's
    /// next hello on this connection finds the started link.
    LinkUnread,
    /// Stream bytes moved so far.
    Progress {
        /// Payload bytes written (sender) or verified-in-order read (receiver).
        bytes: u64,
    },
    /// The stream is over for this end.
    Done {
        /// Whether the stream went across complete and verified.
        ok: bool,
        /// Payload bytes moved.
        bytes: u64,
        /// What went wrong, when not ok.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// The client preamble: the magic and the protocol version.
pub fn preamble() -> [u8; 6] {
    let mut preamble = [0u8; 6];
    preamble[..4].copy_from_slice(&MAGIC);
    preamble[4..].copy_from_slice(&VERSION.to_be_bytes());
    preamble
}

/// Writes the client preamble.
pub async fn write_preamble<W: AsyncWrite + Unpin>(w: &mut W) -> Result<(), ProtocolError> {
    w.write_all(&preamble()).await?;
    Ok(())
}

/// Writes the client preamble and its first message in one write, so that
/// the agent finds both in one read.
pub async fn write_opening<W, T>(w: &mut W, first: &T) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let message = encode_message(first, MAX_MESSAGE_LEN)?;
    let mut opening = Vec::with_capacity(6 + message.len());
    opening.extend_from_slice(&preamble());
    opening.extend_from_slice(&message);
    w.write_all(&opening).await?;
    Ok(())
}

/// Reads and checks the client preamble.
pub async fn read_preamble<R: AsyncRead + Unpin>(r: &mut R) -> Result<(), ProtocolError> {
    let mut preamble = [0u8; 6];
    r.read_exact(&mut preamble)
        .await
        .map_err(ProtocolError::from_read)?;
    let magic: [u8; 4] = preamble[..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let version = u16::from_be_bytes([preamble[4], preamble[5]]);
    if version != VERSION {
        return Err(ProtocolError::UnsupportedVersion(version));
    }
    Ok(())
}

/// Writes one length-prefixed JSON message.
pub async fn write_message<W, T>(w: &mut W, message: &T) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    write_message_within(w, message, MAX_MESSAGE_LEN).await
}

/// Writes `messages` in one write: a reader woken by the first finds the
/// others already there (an answer and the one that follows at once).
pub async fn write_messages<W, T>(w: &mut W, messages: &[T]) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let mut buf = Vec::new();
    for message in messages {
        buf.extend_from_slice(&encode_message(message, MAX_MESSAGE_LEN)?);
    }
    w.write_all(&buf).await?;
    Ok(())
}

/// [`write_message`] with a limit of `limit` bytes instead of
/// [`MAX_MESSAGE_LEN`] (agents' messages to each other, which carry whole
/// workflow specs).
pub async fn write_message_within<W, T>(
    w: &mut W,
    message: &T,
    limit: u32,
) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    w.write_all(&encode_message(message, limit)?).await?;
    Ok(())
}

/// One length-prefixed JSON message, as [`write_message_within`] writes it:
/// for a caller that writes it itself.
pub fn encode_message<T: Serialize>(message: &T, limit: u32) -> Result<Vec<u8>, ProtocolError> {
    let json = serde_json::to_vec(message)?;
    let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    if len > limit {
        return Err(ProtocolError::MessageTooLarge { len, limit });
    }
    let mut buf = Vec::with_capacity(4 + json.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&json);
    Ok(buf)
}

/// Reads one length-prefixed JSON message; `None` on a clean end of stream
/// before the first byte of a message.
pub async fn read_message<R, T>(r: &mut R) -> Result<Option<T>, ProtocolError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    read_message_within(r, MAX_MESSAGE_LEN).await
}

/// [`read_message`] with a limit of `limit` bytes (see
/// [`write_message_within`]).
pub async fn read_message_within<R, T>(r: &mut R, limit: u32) -> Result<Option<T>, ProtocolError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    // Never past the header: a descriptor may ride on the byte after the
    // message (section 3 of docs/PROTOCOL.md).
    let mut len = [0u8; 4];
    let first = r.read(&mut len).await?;
    if first == 0 {
        return Ok(None);
    }
    r.read_exact(&mut len[first..])
        .await
        .map_err(ProtocolError::from_read)?;
    let mut json = vec![0u8; message_len(len, limit)?];
    r.read_exact(&mut json)
        .await
        .map_err(ProtocolError::from_read)?;
    Ok(Some(parse_message(&json)?))
}

/// A message's JSON (what follows its 4-byte header).
pub fn parse_message<T: DeserializeOwned>(json: &[u8]) -> Result<T, ProtocolError> {
    Ok(serde_json::from_slice(json)?)
}

/// The length a message's 4-byte header announces, if within `limit`.
pub fn message_len(header: [u8; 4], limit: u32) -> Result<usize, ProtocolError> {
    let len = u32::from_be_bytes(header);
    if len > limit {
        return Err(ProtocolError::MessageTooLarge { len, limit });
    }
    Ok(len as usize)
}

/// Whether `name` is a valid channel name.
pub fn valid_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= super::MAX_CHANNEL_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
}

/// Whether `run` is a valid run: 1 to [`super::MAX_RUN_LEN`] bytes of
/// printable ASCII without spaces (an execution id or ARN as orchestrators
/// write them).
pub fn valid_run(run: &str) -> bool {
    !run.is_empty() && run.len() <= super::MAX_RUN_LEN && run.bytes().all(|b| b.is_ascii_graphic())
}

/// Hex form of a pairing key, as the agent sends it.
pub fn encode_key(key: &[u8; super::KEY_LEN]) -> String {
    use std::fmt::Write as _;
    // Into one string: an agent encodes a key for every stream it pairs.
    key.iter()
        .fold(String::with_capacity(2 * key.len()), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// Parses the hex form of a pairing key.
pub fn decode_key(hex: &str) -> Option<[u8; super::KEY_LEN]> {
    let mut key = [0u8; super::KEY_LEN];
    if hex.len() != 2 * key.len() {
        return None;
    }
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip() {
        let hello = Hello {
            channel: "wf/edge-1".into(),
            role: Role::Recv,
            netns_cookie: Some(4096),
            listen: Some("127.0.0.1:4000".parse().unwrap()),
            window: Some(1 << 20),
            listener_at_pairing: false,
            stream: None,
            shm: true,
            transport: Some(Transport::Shm),
            live: false,
            store: false,
            secret: Some("shared by both ends".into()),
            kept_ring: false,
            kept_link: false,
            key_ahead: false,
            holds_link: false,
            eager_hello: false,
            unstarted_link: false,
            run: Some("argo-4f6c2d".into()),
        };
        let mut wire = Vec::new();
        write_preamble(&mut wire).await.unwrap();
        write_message(&mut wire, &hello).await.unwrap();
        let mut r = wire.as_slice();
        read_preamble(&mut r).await.unwrap();
        let back: Hello = read_message(&mut r).await.unwrap().unwrap();
        assert_eq!(back, hello);
        assert!(read_message::<_, Hello>(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rejects_foreign_and_future_preambles() {
        let mut r: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(
            read_preamble(&mut r).await,
            Err(ProtocolError::BadMagic(_))
        ));
        let mut r: &[u8] = b"FLKI\x00\x09";
        assert!(matches!(
            read_preamble(&mut r).await,
            Err(ProtocolError::UnsupportedVersion(9))
        ));
    }

    #[tokio::test]
    async fn rejects_oversized_and_truncated_messages() {
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_message::<_, Hello>(&mut r).await,
            Err(ProtocolError::MessageTooLarge { .. })
        ));
        let mut r: &[u8] = &[0, 0, 0, 10, b'{'];
        assert!(matches!(
            read_message::<_, Hello>(&mut r).await,
            Err(ProtocolError::Truncated)
        ));
    }

    #[test]
    fn the_key_goes_ahead_only_between_a_client_and_an_agent_that_both_say_so() {
        // A client from before `key_ahead` does not ask: its agent sends
        // no key on the link, and the client sends its own.
        let open: ClientRequest = serde_json::from_str(r#"{"channel":"c","role":"send"}"#).unwrap();
        let ClientRequest::Open(hello) = open else {
            panic!("not a hello: {open:?}");
        };
        assert!(!hello.key_ahead);
        let open: ClientRequest =
            serde_json::from_str(r#"{"channel":"c","role":"send","key_ahead":true}"#).unwrap();
        assert!(matches!(
            open,
            ClientRequest::Open(Hello {
                key_ahead: true,
                ..
            })
        ));
        // An agent from before it never says `key_sent`: the client sends
        // the key itself.
        let paired: AgentMessage = serde_json::from_str(
            r#"{"event":"paired","transport":"tcp","key":"00","window":1,"socket":"kept_link","again":true,"link":true}"#,
        )
        .unwrap();
        assert!(matches!(
            paired,
            AgentMessage::Paired {
                key_sent: false,
                ..
            }
        ));
    }

    #[test]
    fn first_messages_are_hellos_or_describes() {
        let open: ClientRequest = serde_json::from_str(
            r#"{"role":"send","workflow":"w","token":"t","edge":"e","function":"f","peer":"g"}"#,
        )
        .unwrap();
        let ClientRequest::Open(hello) = open else {
            panic!("not a hello: {open:?}");
        };
        assert_eq!(hello.stream.unwrap().peer, "g");
        let describe: ClientRequest = serde_json::from_str(
            r#"{"describe":{"workflow":"w","token":"t","edge":"e","function":"f"}}"#,
        )
        .unwrap();
        assert!(matches!(describe, ClientRequest::Describe { .. }));
    }

    #[test]
    fn agent_messages_have_stable_json() {
        let m = AgentMessage::Refused {
            error: Refusal::Busy,
            message: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"event":"refused","error":"busy","message":"x"}"#
        );
    }

    #[test]
    fn keys_round_trip() {
        let key = [0xab; 16];
        assert_eq!(decode_key(&encode_key(&key)), Some(key));
        assert_eq!(decode_key("zz"), None);
        assert_eq!(decode_key(&"g".repeat(32)), None);
    }

    #[test]
    fn channel_names() {
        assert!(valid_channel_name("wf/edge-1.part_2:a"));
        assert!(!valid_channel_name(""));
        assert!(!valid_channel_name("has space"));
        assert!(!valid_channel_name(&"x".repeat(256)));
    }
}
