//! The kernel datapath: loads Floki's programs, attaches `sk_msg` to the
//! socket map and then `sock_ops` to the cgroup, pins them, and registers the
//! data endpoints of each channel the agent pairs.

use std::{
    fs::{self, File},
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, SockHash},
    programs::{
        CgroupAttachMode, ProgramInfo, SkMsg, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use floki_common::{
    ChannelEnd, ChannelRecord, DatapathCounters, EndpointKey, ROLE_RECEIVER, ROLE_SENDER,
    SIDE_ACCEPT, SIDE_CONNECT, map, program,
};
use tokio::{io::unix::AsyncFd, net::TcpStream, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{DatapathConfig, DatapathError, mounts};
use floki_proto::control::Hello;
use serde::{Deserialize, Serialize};

/// The kernel object, built by build.rs (aya-build) from `floki-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floki"));

/// Pin name of the `sock_ops` cgroup link.
const SOCK_OPS_LINK_PIN: &str = "sock_ops_link";

/// The pin directory's marker: a directory (bpffs holds no regular files)
/// named after the kernel object and the cgroup it is attached to. A
/// restarted agent adopts the pins only if both are the same.
fn marker(cgroup: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let object = twox_hash::XxHash3_64::oneshot(OBJECT);
    let cgroup = fs::metadata(cgroup).map_or(0, |m| m.ino());
    format!("floki-{object:016x}-cgroup-{cgroup}")
}

/// What the kernel knows about one spliced channel.
#[derive(Clone, Debug)]
pub struct SpliceHandle {
    /// Channel id.
    pub channel: u32,
    keys: Vec<EndpointKey>,
    /// An end the agent put into the socket map itself (a link to a peer).
    link: Option<ChannelEnd>,
}

impl SpliceHandle {
    /// A channel found in the pinned maps by a restarted agent.
    pub fn adopted(channel: u32) -> Self {
        Self {
            channel,
            keys: Vec::new(),
            link: None,
        }
    }
}

/// One kernel program, attached.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachedProgram {
    /// Program name (`floki_sock_ops`, `floki_sk_msg`).
    pub name: String,
    /// Program type (`sock_ops`, `sk_msg`).
    pub kind: String,
    /// Kernel program id (as `bpftool prog` lists it).
    pub id: u32,
    /// Where it is attached.
    pub attached_to: String,
}

/// Floki's programs, loaded and attached.
pub struct EbpfDatapath {
    endpoints: Mutex<HashMap<MapData, EndpointKey, ChannelEnd>>,
    channels: Mutex<HashMap<MapData, u32, ChannelRecord>>,
    counters: Array<MapData, DatapathCounters>,
    sock_ops_link: Mutex<Option<PinnedLink>>,
    // The sk_msg attachment lives on the socket map; the agent inserts its
    // links to peers itself.
    sockets: Mutex<SockHash<MapData, ChannelEnd>>,
    /// The loaded object (`None` when the programs were adopted).
    _ebpf: Mutex<Option<Ebpf>>,
    /// Spliced channels in flight when the agent adopted the pins.
    adopted: Vec<(u32, ChannelRecord)>,
    logger: Mutex<Option<JoinHandle<()>>>,
    programs: Vec<AttachedProgram>,
    cgroup: PathBuf,
    pin_dir: PathBuf,
}

impl EbpfDatapath {
    /// Loads, attaches and pins the programs.
    pub fn load(config: &DatapathConfig) -> Result<Self, DatapathError> {
        let cgroup = match &config.cgroup {
            Some(path) => path.clone(),
            None => mounts::cgroup2_root()?,
        };
        mounts::check_cgroup2(&cgroup)?;
        let cgroup_dir = File::open(&cgroup).map_err(|source| DatapathError::Cgroup {
            path: cgroup.clone(),
            source,
        })?;
        let pin_dir = config.pin_dir.clone();
        mounts::ensure_bpffs(&pin_dir)?;
        let marker = pin_dir.join(marker(&cgroup));
        if marker.is_dir() {
            match Self::adopt(cgroup.clone(), pin_dir.clone()) {
                Ok(datapath) => {
                    info!(
                        pin_dir = %pin_dir.display(),
                        in_flight = datapath.adopted.len(),
                        "adopted the programs and maps a previous agent pinned"
                    );
                    return Ok(datapath);
                }
                Err(err) => warn!(
                    error = %floki_client::error_chain(&err),
                    "cannot adopt the pinned programs; loading them afresh"
                ),
            }
        }
        clear_stale_pins(&pin_dir);

        let mut ebpf = EbpfLoader::new().load(OBJECT)?;
        let logger = start_kernel_logs(aya_log::EbpfLogger::init(&mut ebpf));

        for name in [map::ENDPOINTS, map::SOCKETS, map::CHANNELS, map::COUNTERS] {
            let path = pin_dir.join(name);
            ebpf.map(name)
                .ok_or(DatapathError::Map {
                    name,
                    source: aya::maps::MapError::InvalidName { name: name.into() },
                })?
                .pin(&path)
                .map_err(|source| DatapathError::Pin {
                    what: name,
                    path,
                    source,
                })?;
        }
        let sockets: SockHash<MapData, ChannelEnd> = take_map(&mut ebpf, map::SOCKETS)?;
        let endpoints: HashMap<MapData, EndpointKey, ChannelEnd> =
            take_map(&mut ebpf, map::ENDPOINTS)?;
        let channels: HashMap<MapData, u32, ChannelRecord> = take_map(&mut ebpf, map::CHANNELS)?;
        let counters: Array<MapData, DatapathCounters> = take_map(&mut ebpf, map::COUNTERS)?;

        // sk_msg first: a socket picks up the map's programs when it is inserted.
        let program_err = |name| move |source| DatapathError::Program { name, source };
        let sk_msg: &mut SkMsg = program_mut(&mut ebpf, program::SK_MSG)?
            .try_into()
            .map_err(program_err(program::SK_MSG))?;
        sk_msg.load().map_err(program_err(program::SK_MSG))?;
        sk_msg
            .attach(sockets.fd())
            .map_err(program_err(program::SK_MSG))?;
        let sk_msg_id = sk_msg.info().map_err(program_err(program::SK_MSG))?.id();
        let pin = |what: &'static str, path: PathBuf| {
            move |source| DatapathError::Pin { what, path, source }
        };
        let path = pin_dir.join(program::SK_MSG);
        sk_msg.pin(&path).map_err(pin(program::SK_MSG, path))?;

        let sock_ops: &mut SockOps = program_mut(&mut ebpf, program::SOCK_OPS)?
            .try_into()
            .map_err(program_err(program::SOCK_OPS))?;
        sock_ops.load().map_err(program_err(program::SOCK_OPS))?;
        let link_id = sock_ops
            .attach(&cgroup_dir, CgroupAttachMode::Single)
            .map_err(program_err(program::SOCK_OPS))?;
        let sock_ops_id = sock_ops
            .info()
            .map_err(program_err(program::SOCK_OPS))?
            .id();
        let path = pin_dir.join(program::SOCK_OPS);
        sock_ops.pin(&path).map_err(pin(program::SOCK_OPS, path))?;
        let link = sock_ops
            .take_link(link_id)
            .map_err(program_err(program::SOCK_OPS))?;
        let link: FdLink = link
            .try_into()
            .map_err(|source| DatapathError::Link { source })?;
        let link_path = pin_dir.join(SOCK_OPS_LINK_PIN);
        let sock_ops_link = link.pin(&link_path).map_err(|source| DatapathError::Pin {
            what: "the sock_ops link",
            path: link_path,
            source,
        })?;

        // Last: only a complete set of pins is ever adopted.
        fs::create_dir(&marker).map_err(|source| DatapathError::Bpffs {
            path: marker.clone(),
            source,
        })?;
        Ok(Self {
            endpoints: Mutex::new(endpoints),
            channels: Mutex::new(channels),
            counters,
            sock_ops_link: Mutex::new(Some(sock_ops_link)),
            sockets: Mutex::new(sockets),
            _ebpf: Mutex::new(Some(ebpf)),
            adopted: Vec::new(),
            logger: Mutex::new(logger),
            programs: program_statuses(&cgroup, sock_ops_id, sk_msg_id),
            cgroup,
            pin_dir,
        })
    }

    /// Takes over what a previous agent pinned for the same object and
    /// cgroup: the programs stay attached, spliced streams keep flowing, the
    /// maps keep their channels and counters.
    fn adopt(cgroup: PathBuf, pin_dir: PathBuf) -> Result<Self, DatapathError> {
        let open = |name: &'static str| {
            MapData::from_pin(pin_dir.join(name))
                .map_err(|source| DatapathError::Map { name, source })
        };
        let typed = |name: &'static str| move |source| DatapathError::Map { name, source };
        let sockets: SockHash<MapData, ChannelEnd> =
            SockHash::try_from(Map::SockHash(open(map::SOCKETS)?)).map_err(typed(map::SOCKETS))?;
        let endpoints: HashMap<MapData, EndpointKey, ChannelEnd> =
            HashMap::try_from(Map::HashMap(open(map::ENDPOINTS)?))
                .map_err(typed(map::ENDPOINTS))?;
        let mut channels: HashMap<MapData, u32, ChannelRecord> =
            HashMap::try_from(Map::HashMap(open(map::CHANNELS)?)).map_err(typed(map::CHANNELS))?;
        let counters: Array<MapData, DatapathCounters> =
            Array::try_from(Map::Array(open(map::COUNTERS)?)).map_err(typed(map::COUNTERS))?;
        let link = PinnedLink::from_pin(pin_dir.join(SOCK_OPS_LINK_PIN))
            .map_err(|source| DatapathError::Link { source })?;
        let info = |name: &'static str| {
            ProgramInfo::from_pin(pin_dir.join(name))
                .map_err(|source| DatapathError::Program { name, source })
        };
        let sock_ops_id = info(program::SOCK_OPS)?.id();
        let sk_msg_id = info(program::SK_MSG)?.id();

        // Keep the channels whose sockets are still spliced; the rest were
        // pending with clients of the previous agent, which have given up.
        let records: Vec<(u32, ChannelRecord)> = channels.iter().filter_map(Result::ok).collect();
        let (adopted, stale): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|(_, record)| record.in_flight());
        for (id, _) in &stale {
            let _ = channels.remove(id);
        }
        let mut endpoints = endpoints;
        let keys: Vec<EndpointKey> = endpoints.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = endpoints.remove(&key);
        }
        let logger = start_kernel_logs(aya_log::EbpfLogger::init_from_id(sock_ops_id));
        Ok(Self {
            endpoints: Mutex::new(endpoints),
            channels: Mutex::new(channels),
            counters,
            sock_ops_link: Mutex::new(Some(link)),
            sockets: Mutex::new(sockets),
            _ebpf: Mutex::new(None),
            adopted,
            logger: Mutex::new(logger),
            programs: program_statuses(&cgroup, sock_ops_id, sk_msg_id),
            cgroup,
            pin_dir,
        })
    }

    /// Spliced channels that were in flight when the pins were adopted.
    pub fn adopted(&self) -> &[(u32, ChannelRecord)] {
        &self.adopted
    }

    /// The cgroup `sock_ops` is attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The bpffs directory with the pins.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// What is pinned in the pin directory now, sorted.
    pub fn pins(&self) -> Vec<String> {
        let mut pins: Vec<String> = fs::read_dir(&self.pin_dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        pins.sort();
        pins
    }

    /// The programs, for status.
    pub fn programs(&self) -> &[AttachedProgram] {
        &self.programs
    }

    /// Registers the two data endpoints of channel `id`, so that `sock_ops`
    /// splices exactly the sender's connecting socket and the socket the
    /// receiver's listener accepts from it.
    pub fn install(
        &self,
        id: u32,
        name: &str,
        (sender_netns, receiver_netns): (Option<u64>, Option<u64>),
        listen: SocketAddr,
        granted: u64,
    ) -> Result<SpliceHandle, String> {
        let (Some(sender_netns), Some(receiver_netns)) = (sender_netns, receiver_netns) else {
            return Err(
                "a client did not report its network namespace (SO_NETNS_COOKIE needs Linux 5.14+)"
                    .into(),
            );
        };
        let addr = mapped(listen.ip());
        let port = u32::from(listen.port());
        let keys = [
            EndpointKey {
                netns_cookie: sender_netns,
                addr,
                port,
                side: SIDE_CONNECT,
            },
            EndpointKey {
                netns_cookie: receiver_netns,
                addr,
                port,
                side: SIDE_ACCEPT,
            },
        ];
        let handle = SpliceHandle {
            channel: id,
            keys: keys.to_vec(),
            link: None,
        };
        let result = (|| {
            let record = ChannelRecord {
                granted,
                ..ChannelRecord::named(name)
            };
            self.channels
                .lock()
                .expect("channels lock")
                .insert(id, record, 0)?;
            let mut endpoints = self.endpoints.lock().expect("endpoints lock");
            endpoints.insert(keys[0], end(id, ROLE_SENDER), 0)?;
            endpoints.insert(keys[1], end(id, ROLE_RECEIVER), 0)
        })();
        match result {
            Ok(()) => {
                debug!(channel = id, %listen, "splice registered");
                Ok(handle)
            }
            Err(err) => {
                self.remove(&handle);
                Err(format!(
                    "registering the splice in the kernel maps failed: {err}"
                ))
            }
        }
    }

    /// Registers a producer whose consumer is on another node: its data
    /// socket, connecting to `listener` (this agent's), is redirected by
    /// `floki_sk_msg` straight into the send queue of `link`, the prepared
    /// connection to the consumer's agent.
    pub fn install_outbound(
        &self,
        id: u32,
        producer: &Hello,
        listener: SocketAddr,
        link: &TcpStream,
    ) -> Result<SpliceHandle, String> {
        let netns_cookie = producer
            .netns_cookie
            .ok_or("the producer did not report its network namespace")?;
        let key = EndpointKey {
            netns_cookie,
            addr: mapped(listener.ip()),
            port: u32::from(listener.port()),
            side: SIDE_CONNECT,
        };
        let link_end = end(id, ROLE_RECEIVER);
        let handle = SpliceHandle {
            channel: id,
            keys: vec![key],
            link: Some(link_end),
        };
        let cookie = socket2::SockRef::from(link)
            .cookie()
            .map_err(|err| format!("reading the link's socket cookie: {err}"))?;
        let mut record = ChannelRecord::named(&producer.channel);
        record.cookies[ROLE_RECEIVER as usize] = cookie;
        record.egress[ROLE_SENDER as usize] = 1;
        let result = (|| {
            // The link first: the producer's first write may follow at once.
            self.sockets
                .lock()
                .expect("sockets lock")
                .insert(link_end, link.as_raw_fd(), 0)?;
            self.channels
                .lock()
                .expect("channels lock")
                .insert(id, record, 0)?;
            self.endpoints
                .lock()
                .expect("endpoints lock")
                .insert(key, end(id, ROLE_SENDER), 0)
        })();
        match result {
            Ok(()) => {
                debug!(channel = id, %listener, "producer redirect into the peer link registered");
                Ok(handle)
            }
            Err(err) => {
                self.remove(&handle);
                Err(format!(
                    "registering the redirect into the peer link failed: {err}"
                ))
            }
        }
    }

    /// The kernel's counters for a channel.
    pub fn record(&self, handle: &SpliceHandle) -> Option<ChannelRecord> {
        self.channels
            .lock()
            .expect("channels lock")
            .get(&handle.channel, 0)
            .ok()
    }

    /// Forgets a channel's endpoints and record.
    pub fn remove(&self, handle: &SpliceHandle) {
        let mut endpoints = self.endpoints.lock().expect("endpoints lock");
        for key in &handle.keys {
            let _ = endpoints.remove(key);
        }
        drop(endpoints);
        if let Some(link) = &handle.link {
            let _ = self.sockets.lock().expect("sockets lock").remove(link);
        }
        let _ = self
            .channels
            .lock()
            .expect("channels lock")
            .remove(&handle.channel);
    }

    /// Totals since the programs were loaded.
    pub fn counters(&self) -> DatapathCounters {
        self.counters.get(&0, 0).unwrap_or_default()
    }

    /// Detaches the programs and removes the pins. Sockets already spliced
    /// stay spliced until they close: the kernel keeps what they reference.
    pub fn shutdown(&self) {
        if let Some(link) = self.sock_ops_link.lock().expect("link lock").take() {
            match link.unpin() {
                Ok(link) => drop(link),
                Err(err) => warn!(%err, "unpinning the sock_ops link failed"),
            }
        }
        if let Err(err) = unpin_all(&self.pin_dir) {
            warn!(pin_dir = %self.pin_dir.display(), %err, "removing the pins failed; `floki-agent cleanup` removes them");
        }
        if let Some(logger) = self.logger.lock().expect("logger lock").take() {
            logger.abort();
        }
    }
}

const fn end(channel: u32, role: u32) -> ChannelEnd {
    ChannelEnd { channel, role }
}

/// An address as the kernel programs see it: IPv6, or IPv4 mapped.
fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::programs::Program, DatapathError> {
    ebpf.program_mut(name).ok_or(DatapathError::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    map.try_into()
        .map_err(|source| DatapathError::Map { name, source })
}

/// Pins left by an agent that did not stop cleanly. Removing them detaches
/// its `sock_ops`; sockets it spliced stay spliced until they close.
fn clear_stale_pins(pin_dir: &Path) {
    let removed = remove_pins(pin_dir).map_or(0, |names| names.len());
    if removed > 0 {
        warn!(
            pin_dir = %pin_dir.display(),
            removed,
            "removed pins left by an agent that did not stop cleanly"
        );
    }
}

/// Removes every pin in `pin_dir` and the directory itself, detaching what
/// only the pins kept attached (`floki-agent cleanup`); returns the names
/// removed. The kernel frees the programs once nothing references them.
pub fn unpin_all(pin_dir: &Path) -> std::io::Result<Vec<String>> {
    let removed = remove_pins(pin_dir)?;
    fs::remove_dir(pin_dir)?;
    Ok(removed)
}

/// Removes what `pin_dir` holds (pins are files, the marker a directory);
/// returns the names, sorted.
fn remove_pins(pin_dir: &Path) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(pin_dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            fs::remove_dir(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
        removed.push(entry.file_name().to_string_lossy().into_owned());
    }
    removed.sort();
    Ok(removed)
}

fn program_statuses(cgroup: &Path, sock_ops_id: u32, sk_msg_id: u32) -> Vec<AttachedProgram> {
    vec![
        AttachedProgram {
            name: program::SOCK_OPS.into(),
            kind: "sock_ops".into(),
            id: sock_ops_id,
            attached_to: format!("cgroup {}", cgroup.display()),
        },
        AttachedProgram {
            name: program::SK_MSG.into(),
            kind: "sk_msg".into(),
            id: sk_msg_id,
            attached_to: format!("sockhash {}", map::SOCKETS),
        },
    ]
}

/// Forwards the kernel programs' aya-log records to tracing.
fn start_kernel_logs(
    logger: Result<aya_log::EbpfLogger<&'static dyn log::Log>, aya_log::Error>,
) -> Option<JoinHandle<()>> {
    let logger = match logger {
        Ok(logger) => logger,
        Err(err) => {
            debug!(%err, "kernel-side logs unavailable");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer fd and keeps it open while
    // registered; it is never replaced.
    let logger = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut logger = match logger {
        Ok(fd) => fd,
        Err(err) => {
            debug!(%err, "kernel-side logs unavailable");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
