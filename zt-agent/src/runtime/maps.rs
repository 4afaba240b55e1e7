//! Map sync: reads the agent-owned maps back into a [`DatapathState`] and applies
//! [`MapWrite`]s in the order `datapath::plan` gives them.
//!
//! Reading back is what makes restarts safe: a restarted agent diffs its desired state against
//! what the kernel really holds, so it writes only the difference and removes only stale entries.

use std::net::IpAddr;

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, LpmTrie, Map, MapError, PerCpuArray, lpm_trie::Key as LpmKey},
};
use ipnet::IpNet;
use zt_common::{
    config::{self, Config},
    endpoint::{EndpointKey, EndpointValue},
    identity::IdentityValue,
    names,
    policy::{PolicyKey, PolicyValue},
    reason,
};

use crate::{
    datapath::{DatapathState, MapWrite, Op},
    error::{Error, Result},
};

fn map<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Map> {
    ebpf.map(name)
        .ok_or_else(|| Error::Ebpf(format!("the object has no map {name}")))
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| Error::Ebpf(format!("the object has no map {name}")))
}

fn ebpf_err(name: &str) -> impl Fn(MapError) -> Error + '_ {
    move |e| Error::Ebpf(format!("{name}: {e}"))
}

pub use zt_common::{addr_from_ip as addr_of, ip_from_addr as ip_of};

/// What the kernel maps hold now.
pub fn read_state(ebpf: &Ebpf) -> Result<DatapathState> {
    let mut state = DatapathState::default();
    let endpoints: HashMap<_, EndpointKey, EndpointValue> =
        HashMap::try_from(map(ebpf, names::MAP_ENDPOINTS)?)
            .map_err(ebpf_err(names::MAP_ENDPOINTS))?;
    for entry in endpoints.iter() {
        let (k, v) = entry.map_err(ebpf_err(names::MAP_ENDPOINTS))?;
        state.endpoints.insert(ip_of(k.addr), v);
    }
    let policy: HashMap<_, PolicyKey, PolicyValue> =
        HashMap::try_from(map(ebpf, names::MAP_POLICY)?).map_err(ebpf_err(names::MAP_POLICY))?;
    for entry in policy.iter() {
        let (k, v) = entry.map_err(ebpf_err(names::MAP_POLICY))?;
        state.policy.insert(k, v);
    }
    read_trie::<[u8; 4]>(ebpf, names::MAP_IDENTITY_V4, &mut state)?;
    read_trie::<[u8; 16]>(ebpf, names::MAP_IDENTITY_V6, &mut state)?;
    read_hosts::<[u8; 4]>(ebpf, names::MAP_HOST_IDENTITY_V4, &mut state)?;
    read_hosts::<[u8; 16]>(ebpf, names::MAP_HOST_IDENTITY_V6, &mut state)?;
    Ok(state)
}

/// Adds an identity trie's prefixes to `state`.
fn read_trie<K>(ebpf: &Ebpf, name: &str, state: &mut DatapathState) -> Result<()>
where
    K: Pod + Into<IpAddr>,
{
    let trie: LpmTrie<_, K, IdentityValue> =
        LpmTrie::try_from(map(ebpf, name)?).map_err(ebpf_err(name))?;
    for entry in trie.iter() {
        let (k, v) = entry.map_err(ebpf_err(name))?;
        let net = IpNet::new(k.data().into(), k.prefix_len() as u8)
            .map_err(|e| Error::Ebpf(format!("{name}: {e}")))?;
        state.identities.insert(net, v.identity);
    }
    Ok(())
}

/// Adds a host identity map's addresses to `state`, as full-length prefixes.
fn read_hosts<K>(ebpf: &Ebpf, name: &str, state: &mut DatapathState) -> Result<()>
where
    K: Pod + Into<IpAddr>,
{
    let hosts: HashMap<_, K, IdentityValue> =
        HashMap::try_from(map(ebpf, name)?).map_err(ebpf_err(name))?;
    for entry in hosts.iter() {
        let (k, v) = entry.map_err(ebpf_err(name))?;
        state.identities.insert(IpNet::from(k.into()), v.identity);
    }
    Ok(())
}

/// Applies `writes` in order; stops at the first failure (the caller re-reads the maps then).
/// Applies `writes` in order. An insert that a full map refuses is skipped, not fatal: the plan's
/// order is safe with any subset of its inserts missing (an allow entry that is absent denies; an
/// endpoint written without all its entries is isolated, never open), so the rest of the plan,
/// deletes included, still runs, and the refused inserts are tried once more after it, in the
/// room the deletes made. Returns the writes still refused. Any other failure stops the sync.
pub fn apply(ebpf: &mut Ebpf, writes: &[MapWrite]) -> Result<Vec<MapWrite>> {
    let mut refused = Vec::new();
    for write in writes {
        match apply_one(ebpf, write) {
            Ok(()) => {}
            Err(Error::MapFull { .. }) => refused.push(*write),
            Err(error) => return Err(error),
        }
    }
    let mut still = Vec::new();
    for write in refused {
        match apply_one(ebpf, &write) {
            Ok(()) => {}
            Err(Error::MapFull { .. }) => still.push(write),
            Err(error) => return Err(error),
        }
    }
    Ok(still)
}

/// The map a write goes to, as named in `zt_common::names` (for single addresses, the host map).
pub fn map_of(write: &MapWrite) -> &'static str {
    match write {
        MapWrite::Policy(..) => names::MAP_POLICY,
        MapWrite::Endpoint(..) => names::MAP_ENDPOINTS,
        MapWrite::Identity(IpNet::V4(net), _) if net.prefix_len() == 32 => {
            names::MAP_HOST_IDENTITY_V4
        }
        MapWrite::Identity(IpNet::V6(net), _) if net.prefix_len() == 128 => {
            names::MAP_HOST_IDENTITY_V6
        }
        MapWrite::Identity(IpNet::V4(_), _) => names::MAP_IDENTITY_V4,
        MapWrite::Identity(IpNet::V6(_), _) => names::MAP_IDENTITY_V6,
        MapWrite::BumpRevision => names::MAP_CONFIG,
    }
}

fn apply_one(ebpf: &mut Ebpf, write: &MapWrite) -> Result<()> {
    match *write {
        MapWrite::Policy(key, op) => write_hash(ebpf, names::MAP_POLICY, key, op),
        MapWrite::Endpoint(ip, op) => write_hash(
            ebpf,
            names::MAP_ENDPOINTS,
            EndpointKey { addr: addr_of(ip) },
            op,
        ),
        // A single address goes to the family's host map, a shorter prefix to its trie (see
        // `zt_common::identity`).
        MapWrite::Identity(IpNet::V4(net), op) if net.prefix_len() == net.max_prefix_len() => {
            let (host, trie) = (names::MAP_HOST_IDENTITY_V4, names::MAP_IDENTITY_V4);
            write_host(ebpf, host, trie, net.addr().octets(), 32, op)
        }
        MapWrite::Identity(IpNet::V6(net), op) if net.prefix_len() == net.max_prefix_len() => {
            let (host, trie) = (names::MAP_HOST_IDENTITY_V6, names::MAP_IDENTITY_V6);
            write_host(ebpf, host, trie, net.addr().octets(), 128, op)
        }
        MapWrite::Identity(IpNet::V4(net), op) => write_lpm(
            ebpf,
            names::MAP_IDENTITY_V4,
            LpmKey::new(net.prefix_len().into(), net.network().octets()),
            op,
        ),
        MapWrite::Identity(IpNet::V6(net), op) => write_lpm(
            ebpf,
            names::MAP_IDENTITY_V6,
            LpmKey::new(net.prefix_len().into(), net.network().octets()),
            op,
        ),
        MapWrite::BumpRevision => {
            let mut config = read_config(ebpf)?;
            config.policy_revision = config.policy_revision.wrapping_add(1);
            write_config(ebpf, config)
        }
    }
}

/// One upsert or delete of a single address's identity in the `host` map. Deletes clear the
/// family's `trie` too: maps pinned by an older version held single addresses there, and a stale
/// one would still answer for the address.
fn write_host<K: Pod>(
    ebpf: &mut Ebpf,
    host: &'static str,
    trie: &'static str,
    addr: K,
    bits: u32,
    op: Op<u32>,
) -> Result<()> {
    if op == Op::Delete {
        write_lpm(ebpf, trie, LpmKey::new(bits, addr), Op::Delete)?;
    }
    write_hash(ebpf, host, addr, identity_op(op))
}

fn identity_op(op: Op<u32>) -> Op<IdentityValue> {
    match op {
        Op::Upsert(identity) => Op::Upsert(IdentityValue { identity }),
        Op::Delete => Op::Delete,
    }
}

/// One upsert or delete in a hash map; deleting an absent key is not an error.
fn write_hash<K: Pod, V: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    key: K,
    op: Op<V>,
) -> Result<()> {
    let mut m: HashMap<_, K, V> =
        HashMap::try_from(map_mut(ebpf, name)?).map_err(ebpf_err(name))?;
    match op {
        Op::Upsert(v) => m.insert(key, v, 0),
        Op::Delete => ignore_missing(m.remove(&key)),
    }
    .map_err(write_err(name))
}

/// One upsert or delete in an identity trie; deleting an absent prefix is not an error.
fn write_lpm<K: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    key: LpmKey<K>,
    op: Op<u32>,
) -> Result<()> {
    let mut m: LpmTrie<_, K, IdentityValue> =
        LpmTrie::try_from(map_mut(ebpf, name)?).map_err(ebpf_err(name))?;
    match op {
        Op::Upsert(identity) => m.insert(&key, IdentityValue { identity }, 0),
        Op::Delete => ignore_missing(m.remove(&key)),
    }
    .map_err(write_err(name))
}

/// A refused write: [`Error::MapFull`] when the map has no room (a hash map says `E2BIG`, a trie
/// `ENOSPC`), [`Error::Ebpf`] otherwise.
fn write_err(name: &'static str) -> impl Fn(MapError) -> Error {
    move |e| match &e {
        MapError::SyscallError(s)
            if matches!(
                s.io_error.raw_os_error(),
                Some(code) if code == nix::errno::Errno::E2BIG as i32
                    || code == nix::errno::Errno::ENOSPC as i32
            ) =>
        {
            Error::MapFull { map: name }
        }
        _ => Error::Ebpf(format!("{name}: {e}")),
    }
}

/// A delete of an absent key succeeds. aya reports that as `KeyNotFound` for hash maps and as
/// the syscall's ENOENT for LPM tries.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) =>
        {
            Ok(())
        }
        other => other,
    }
}

pub fn read_config(ebpf: &Ebpf) -> Result<Config> {
    let name = names::MAP_CONFIG;
    let m: Array<_, Config> = Array::try_from(map(ebpf, name)?).map_err(ebpf_err(name))?;
    m.get(&0, 0).map_err(ebpf_err(name))
}

pub fn write_config(ebpf: &mut Ebpf, config: Config) -> Result<()> {
    let name = names::MAP_CONFIG;
    let mut m: Array<_, Config> = Array::try_from(map_mut(ebpf, name)?).map_err(ebpf_err(name))?;
    m.set(0, config, 0).map_err(ebpf_err(name))
}

/// Sets the agent's knobs, keeping the policy revision the maps already carry.
pub fn configure(ebpf: &mut Ebpf, fail_open: bool) -> Result<Config> {
    let mut config = read_config(ebpf)?;
    config.event_mask = config::event_mask::ALL;
    config.flags = if fail_open {
        0
    } else {
        config::flags::FAIL_CLOSED
    };
    write_config(ebpf, config)?;
    Ok(config)
}

/// Every reason counter, summed over CPUs.
pub fn counters(ebpf: &Ebpf) -> Result<[u64; reason::COUNT as usize]> {
    let name = names::MAP_COUNTERS;
    let m: PerCpuArray<_, u64> = PerCpuArray::try_from(map(ebpf, name)?).map_err(ebpf_err(name))?;
    let mut out = [0; reason::COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = m.get(&(i as u32), 0).map_err(ebpf_err(name))?.iter().sum();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_the_map_form() {
        for ip in ["10.1.2.3", "::1", "fd00::5", "0.0.0.0"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_of(addr_of(ip)), ip);
        }
    }
}
