//! Mutual authentication of agents with the cluster secret, before any
//! agent-to-agent request.
//!
//! Right after the `FLKA` preamble, on the agents' own port:
//!
//! ```text
//! caller   -> answerer: nonce_c (32 bytes)
//! answerer -> caller:   nonce_s (32 bytes)
//! caller   -> answerer: HMAC-SHA256(secret, "floki caller" | nonce_c | nonce_s)
//! answerer -> caller:   HMAC-SHA256(secret, "floki answerer" | nonce_c | nonce_s)
//! ```
//!
//! The answerer checks the caller's proof against every secret it accepts
//! and, if none matches, closes the connection without a word: an outsider
//! changes nothing and learns nothing, not even which requests exist. The
//! caller checks the answerer's proof in turn, so neither side talks to an
//! impostor. Both nonces are fresh, so a recorded exchange replays nothing.
//!
//! The session key (HMAC of both nonces under the same secret) derives the
//! pairing keys of cross-node streams: they are never sent, and only the two
//! agents of this connection know them.

use std::{path::Path, time::Duration};

use floki_proto::KEY_LEN;
use hmac::{Hmac, KeyInit as _, Mac as _};
use rand::RngCore as _;
use sha2::Sha256;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    time::timeout,
};

use crate::workflow::StreamId;

/// Bytes of a nonce and of a proof.
const PROOF_LEN: usize = 32;
/// The shortest secret accepted (a 128-bit random value, hex or not).
pub const MIN_SECRET_LEN: usize = 16;
/// How long either side has to complete the exchange.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

type HmacSha256 = Hmac<Sha256>;

/// Why two agents did not authenticate each other.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No secret given, or one too short.
    #[error(
        "cluster secret {0}: give every agent the same secret of at least {MIN_SECRET_LEN} bytes (--cluster-secret-file or FLOKI_CLUSTER_SECRET; docs/SECURITY.md)"
    )]
    BadSecret(String),
    /// The secret file could not be read.
    #[error("reading the cluster secret file {path}")]
    ReadSecret {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The other side closed the connection instead of proving itself, or
    /// refused this agent's proof.
    #[error(
        "the other agent closed the connection during authentication: it does not accept this agent's cluster secret (or runs another version)"
    )]
    Refused,
    /// The other side's proof does not match the secret.
    #[error("the other agent's proof does not match the cluster secret: it is not one of ours")]
    BadProof,
    /// Too slow.
    #[error("no authentication within {AUTH_TIMEOUT:?}")]
    Timeout,
    /// The connection failed.
    #[error("connection failed during authentication")]
    Io(#[from] std::io::Error),
}

/// The secrets this agent accepts: the first proves this agent to others,
/// any of them is accepted from others (so that a secret can be rotated one
/// agent at a time; docs/SECURITY.md).
#[derive(Clone)]
pub struct ClusterSecret {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret({} key(s), redacted)", self.keys.len())
    }
}

impl ClusterSecret {
    /// One secret per line (blank lines and `#` comments skipped); the first
    /// is this agent's own.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let keys: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| line.as_bytes().to_vec())
            .collect();
        if keys.is_empty() {
            return Err(AuthError::BadSecret("is empty".into()));
        }
        if let Some(short) = keys.iter().position(|key| key.len() < MIN_SECRET_LEN) {
            return Err(AuthError::BadSecret(format!(
                "line {} is {} bytes long",
                short + 1,
                keys[short].len()
            )));
        }
        Ok(Self { keys })
    }

    /// Reads a secret file (as [`ClusterSecret::parse`]).
    pub fn read(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::ReadSecret {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }
}

/// What two authenticated agents share for the rest of a connection.
pub struct Session {
    key: [u8; 32],
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session(redacted)")
    }
}

impl Session {
    /// The pairing key of one use of `stream` over this connection: both
    /// functions of the stream present it, and nobody else can know it.
    pub fn stream_key(&self, stream: &StreamId) -> [u8; KEY_LEN] {
        let mac = mac(
            &self.key,
            b"floki stream key",
            &[stream.to_string().as_bytes()],
        );
        mac[..KEY_LEN].try_into().expect("KEY_LEN <= 32")
    }
}

/// The caller's side, after its preamble: proves this agent to the
/// answerer and checks the answerer's proof.
pub async fn prove_to<S>(stream: &mut S, secret: &ClusterSecret) -> Result<Session, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    bounded(async {
        let own = &secret.keys[0];
        let ours = nonce();
        stream.write_all(&ours).await?;
        let theirs = read_proof(stream).await?;
        let proof = mac(own, b"floki caller", &[&ours, &theirs]);
        stream.write_all(&proof).await?;
        let answer = read_proof(stream).await?;
        if !verify(own, b"floki answerer", &[&ours, &theirs], &answer) {
            return Err(AuthError::BadProof);
        }
        Ok(session(own, &ours, &theirs))
    })
    .await
}

/// The answerer's side, after the caller's preamble: checks the caller's
/// proof against every accepted secret, then proves itself with the one
/// that matched. On [`AuthError::BadProof`] the caller gets nothing.
pub async fn check_caller<S>(stream: &mut S, secret: &ClusterSecret) -> Result<Session, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    bounded(async {
        let theirs = read_proof(stream).await?;
        let ours = nonce();
        stream.write_all(&ours).await?;
        let proof = read_proof(stream).await?;
        let key = secret
            .keys
            .iter()
            .find(|key| verify(key, b"floki caller", &[&theirs, &ours], &proof))
            .ok_or(AuthError::BadProof)?;
        stream
            .write_all(&mac(key, b"floki answerer", &[&theirs, &ours]))
            .await?;
        Ok(session(key, &theirs, &ours))
    })
    .await
}

async fn bounded<T>(exchange: impl Future<Output = Result<T, AuthError>>) -> Result<T, AuthError> {
    timeout(AUTH_TIMEOUT, exchange)
        .await
        .map_err(|_| AuthError::Timeout)?
}

async fn read_proof<S: AsyncRead + Unpin>(stream: &mut S) -> Result<[u8; PROOF_LEN], AuthError> {
    let mut buf = [0u8; PROOF_LEN];
    match stream.read_exact(&mut buf).await {
        Ok(_) => Ok(buf),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Err(AuthError::Refused),
        Err(err) => Err(err.into()),
    }
}

fn nonce() -> [u8; PROOF_LEN] {
    let mut nonce = [0u8; PROOF_LEN];
    rand::rng().fill_bytes(&mut nonce);
    nonce
}

fn hmac_of(key: &[u8], label: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(label);
    for part in parts {
        mac.update(part);
    }
    mac
}

fn mac(key: &[u8], label: &[u8], parts: &[&[u8]]) -> [u8; PROOF_LEN] {
    hmac_of(key, label, parts).finalize().into_bytes().into()
}

/// Constant-time comparison (the `hmac` crate's).
fn verify(key: &[u8], label: &[u8], parts: &[&[u8]], proof: &[u8]) -> bool {
    hmac_of(key, label, parts).verify_slice(proof).is_ok()
}

fn session(key: &[u8], caller: &[u8], answerer: &[u8]) -> Session {
    Session {
        key: mac(key, b"floki session", &[caller, answerer]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_id() -> StreamId {
        StreamId {
            workflow: "wf".into(),
            edge: "e".into(),
            producer: "a".into(),
            consumer: "b".into(),
        }
    }

    #[test]
    fn secrets_parse_with_rotation_and_refuse_short_ones() {
        let secret =
            ClusterSecret::parse("# new first\nnew-secret-0123456789\nold-secret-0123456789\n")
                .unwrap();
        assert_eq!(secret.keys.len(), 2);
        assert_eq!(secret.keys[0], b"new-secret-0123456789");
        let err = ClusterSecret::parse("short").unwrap_err().to_string();
        assert!(err.contains("line 1 is 5 bytes long"), "{err}");
        assert!(ClusterSecret::parse("\n# only a comment\n").is_err());
    }

    async fn exchange(
        caller: &ClusterSecret,
        answerer: &ClusterSecret,
    ) -> (Result<Session, AuthError>, Result<Session, AuthError>) {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let answerer = answerer.clone();
        let answering = tokio::spawn(async move {
            let result = check_caller(&mut b, &answerer).await;
            drop(b); // an answerer that refuses hangs up
            result
        });
        let called = prove_to(&mut a, caller).await;
        (called, answering.await.unwrap())
    }

    #[tokio::test]
    async fn agents_with_the_same_secret_share_stream_keys() {
        let secret = ClusterSecret::parse("the-cluster-secret-0123").unwrap();
        let (caller, answerer) = exchange(&secret, &secret).await;
        let (caller, answerer) = (caller.unwrap(), answerer.unwrap());
        assert_eq!(
            caller.stream_key(&stream_id()),
            answerer.stream_key(&stream_id())
        );
        // A second connection has other keys.
        let (again, _) = exchange(&secret, &secret).await;
        assert_ne!(
            again.unwrap().stream_key(&stream_id()),
            caller.stream_key(&stream_id())
        );
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_on_both_sides() {
        let ours = ClusterSecret::parse("the-cluster-secret-0123").unwrap();
        let theirs = ClusterSecret::parse("another-secret-456789").unwrap();
        let (caller, answerer) = exchange(&theirs, &ours).await;
        assert!(matches!(answerer, Err(AuthError::BadProof)), "{answerer:?}");
        assert!(matches!(caller, Err(AuthError::Refused)), "{caller:?}");
    }

    #[tokio::test]
    async fn an_answerer_accepts_an_old_secret_while_it_rotates() {
        let rotating =
            ClusterSecret::parse("new-secret-0123456789\nold-secret-0123456789").unwrap();
        let old = ClusterSecret::parse("old-secret-0123456789").unwrap();
        let (caller, answerer) = exchange(&old, &rotating).await;
        assert!(caller.is_ok() && answerer.is_ok());
    }
}
