//! Sums across the ranks of a [`World`] over TCP: rank 0 listens, every other rank connects to
//! it once at the start. A sum is a gather to rank 0, which adds the ranks' values in rank order
//! (x0 + x1, then + x2, ...), and a scatter of the result: every rank gets the same bits, and
//! the same bits run after run, whatever order the messages arrive in.
//!
//! Every message is a little-endian u64 element count, then the elements. A rank that stops
//! (error, Ctrl-C, kill) closes its connection, and the others' next sum ends with an error that
//! names it, instead of waiting for it.

use super::World;
use anyhow::{bail, Context, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// What a rank sends first: "gptr", then its rank, the world size and the run's check value.
const MAGIC: u32 = 0x6770_7472;
/// How long rank 0 keeps a connection that has not said all of that.
const HELLO_WAIT: Duration = Duration::from_secs(10);

/// The variable that names rank 0's address (`host:port`) for gptrain's own connections.
pub const ADDR_VAR: &str = "GPTRAIN_DIST_ADDR";
/// The variable that bounds, in seconds, the wait for the other ranks (at the start and at each sum).
pub const TIMEOUT_VAR: &str = "GPTRAIN_DIST_TIMEOUT_S";

/// The ranks' connections, as seen from one rank.
pub struct Group {
    world: World,
    /// Rank 0: to ranks 1.. in order; another rank: to rank 0.
    links: Vec<TcpStream>,
}

/// Where the ranks reach rank 0: `$GPTRAIN_DIST_ADDR`, else `$MASTER_ADDR` (default 127.0.0.1
/// when every rank is on one machine) and `$MASTER_PORT` (default 29500), plus one when
/// torchrun's agent listens on that port itself (`TORCHELASTIC_USE_AGENT_STORE=True`, torch
/// 2.5 on). Rank 0 listens on that port on every interface.
pub fn rendezvous_addr(world: &World, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    if let Some(a) = env(ADDR_VAR) {
        if a.matches(':').count() > 1 && !a.starts_with('[') {
            bail!("{ADDR_VAR}={a:?}: an IPv6 address goes in brackets before its port, as [::1]:29500");
        }
        return Ok(a);
    }
    let host = match env("MASTER_ADDR") {
        Some(h) => h,
        None if world.local_size < world.size => bail!(
            "the {} ranks span several machines ({} here) and nothing says where rank 0 is: set MASTER_ADDR (and MASTER_PORT) to rank 0's host, or {ADDR_VAR}=host:port",
            world.size,
            world.local_size
        ),
        None => "127.0.0.1".into(),
    };
    let port = match env("MASTER_PORT") {
        Some(p) => p.trim().parse::<u16>().map_err(|_| anyhow::anyhow!("MASTER_PORT={p:?} is not a port number"))?,
        None => 29500,
    };
    let agent = env("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    // an IPv6 address goes in brackets before its port
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
    Ok(format!(
        "{host}:{}",
        port.checked_add(u16::from(agent)).context("MASTER_PORT 65535 is taken by torchrun's agent; set GPTRAIN_DIST_ADDR")?
    ))
}

/// How long to wait for the other ranks: `$GPTRAIN_DIST_TIMEOUT_S`, default 30 minutes (a
/// checkpoint written by rank 0 holds the others at their next sum).
pub fn timeout_from_env() -> Result<Duration> {
    match std::env::var(TIMEOUT_VAR) {
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            _ => bail!("{TIMEOUT_VAR}={v:?} must be a positive number of seconds"),
        },
        Err(_) => Ok(Duration::from_secs(1800)),
    }
}

impl Group {
    /// Connects the ranks of `world` through rank 0 at `addr` (`host:port`). `check` must be
    /// the same on every rank (a hash of the run's configuration): a rank with another one is
    /// refused with an error naming it. Waits at most `timeout` for the others.
    pub fn connect(world: &World, addr: &str, check: u64, timeout: Duration) -> Result<Group> {
        let links = if world.size == 1 {
            Vec::new()
        } else if world.is_root() {
            accept_all(world, addr, check, timeout)?
        } else {
            vec![join(world, addr, check, timeout)?]
        };
        for l in &links {
            l.set_nodelay(true).ok();
            l.set_read_timeout(Some(timeout)).ok();
            l.set_write_timeout(Some(timeout)).ok();
        }
        Ok(Group { world: world.clone(), links })
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    /// The world of `group`, or one process alone when there is none.
    pub fn world_of(group: Option<&Group>) -> &World {
        group.map_or(&World::ALONE, Group::world)
    }

    /// The first rank whose connection has closed (its process ended or failed), found without
    /// reading anything: for waits outside the group's own messages, such as NCCL's start. A
    /// close is seen only once nothing sent before it is left unread.
    pub fn gone(&self) -> Option<usize> {
        first_closed(&self.links, self.world.is_root())
    }

    /// [`Group::gone`] for another thread or owner (the GPU backend, watching its NCCL sums):
    /// it watches copies of the group's connections (the same sockets), reading nothing.
    pub fn watcher(&self) -> Result<impl Fn() -> Option<usize> + Send + 'static> {
        let links = self.links.iter().map(TcpStream::try_clone).collect::<std::io::Result<Vec<_>>>()?;
        let root = self.world.is_root();
        Ok(move || first_closed(&links, root))
    }

    /// Returns when every rank has called it.
    pub fn barrier(&mut self) -> Result<()> {
        self.sum_f64(&mut [0.0])
    }

    /// [`Group::barrier`], each rank waiting up to `extra` longer than the group's timeout: for
    /// the wait after rank 0's last checkpoint, which it may retry for `checkpoint_retry_s`.
    pub fn barrier_allowing(&mut self, extra: Duration) -> Result<()> {
        let base = self.links.first().and_then(|l| l.read_timeout().ok().flatten());
        let set = |links: &[TcpStream], t: Option<Duration>| links.iter().for_each(|l| drop(l.set_read_timeout(t)));
        if let Some(b) = base {
            set(&self.links, Some(b.saturating_add(extra)));
        }
        let within = format!("within {TIMEOUT_VAR}");
        let done = self.barrier().map_err(|e| match e.to_string() {
            m if !extra.is_zero() && m.contains(&within) => {
                anyhow::anyhow!(m.replace(&within, &format!("{within} plus {} s", extra.as_secs())))
            }
            _ => e,
        });
        if base.is_some() {
            set(&self.links, base);
        }
        done
    }

    /// Every rank's `x` summed, in rank order, into every rank's `x` (same length everywhere).
    pub fn sum_f32(&mut self, x: &mut [f32]) -> Result<()> {
        self.sum(x, f32::to_le_bytes, f32::from_le_bytes, None)
    }

    /// ZeRO-1's sum: every rank's `x` summed in rank order, as [`Group::sum_f32`], but rank r
    /// gets back only its part `parts[r]` of the sum (the rest of its `x` keeps its own values;
    /// rank 0 keeps the whole sum).
    pub fn sum_f32_to_owners(&mut self, x: &mut [f32], parts: &[crate::backend::Span]) -> Result<()> {
        assert!(parts.len() == self.world.size && parts.iter().all(|p| p.end() <= x.len()), "a part per rank, in x");
        self.sum(x, f32::to_le_bytes, f32::from_le_bytes, Some(parts))
    }

    /// [`Group::sum_f32`] for f64 values.
    pub fn sum_f64(&mut self, x: &mut [f64]) -> Result<()> {
        self.sum(x, f64::to_le_bytes, f64::from_le_bytes, None)
    }

    /// Every rank's `mine` (the same length on every rank), in rank order, to every rank: a
    /// sum in which each rank fills its own slot and adds zeros elsewhere, so exact.
    pub fn gather_f64(&mut self, mine: &[f64]) -> Result<Vec<f64>> {
        let (r, n) = (self.world.rank, mine.len());
        let mut all = vec![0.0; n * self.world.size];
        all[r * n..(r + 1) * n].copy_from_slice(mine);
        self.sum_f64(&mut all)?;
        Ok(all)
    }

    /// Rank 0's `x` into every rank's `x`: a sum in which the other ranks add zeros, so exact.
    pub fn broadcast_f64(&mut self, x: &mut [f64]) -> Result<()> {
        if !self.world.is_root() {
            x.fill(0.0);
        }
        self.sum_f64(x)
    }

    /// Every rank's `mine` (lengths may differ), concatenated in rank order: to every rank when
    /// `to_all`, else to rank 0 only (None on the others). Copied, not added: exact, signs of
    /// zero and NaNs included. ZeRO-1's exchange of the ranks' parts.
    pub fn gather_f32(&mut self, mine: &[f32], to_all: bool) -> Result<Option<Vec<f32>>> {
        if self.world.size == 1 {
            return Ok(Some(mine.to_vec()));
        }
        let mut buf = Vec::new();
        if self.world.is_root() {
            let mut all = mine.to_vec();
            for (i, link) in self.links.iter_mut().enumerate() {
                recv_any(link, i + 1, 4, &mut buf)?;
                all.extend(buf.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())));
            }
            if to_all {
                let out = encode(&all, f32::to_le_bytes);
                for (i, link) in self.links.iter_mut().enumerate() {
                    send(link, i + 1, &out)?;
                }
            }
            Ok(Some(all))
        } else {
            let link = &mut self.links[0];
            send(link, 0, &encode(mine, f32::to_le_bytes))?;
            if !to_all {
                return Ok(None);
            }
            recv_any(link, 0, 4, &mut buf)?;
            Ok(Some(buf.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()))
        }
    }

    /// Every rank's `x` added in rank order by rank 0, which hands back to rank r the whole sum,
    /// or only `parts[r]` of it (the rest of that rank's `x` left as it was).
    fn sum<T, const N: usize>(
        &mut self,
        x: &mut [T],
        to: fn(T) -> [u8; N],
        from: fn([u8; N]) -> T,
        parts: Option<&[crate::backend::Span]>,
    ) -> Result<()>
    where
        T: Copy + std::ops::AddAssign,
    {
        if self.world.size == 1 {
            return Ok(());
        }
        let n = x.len();
        let back = |r: usize| parts.map_or(0..n, |p| p[r].off..p[r].end());
        if self.world.is_root() {
            let mut buf = Vec::new();
            for (i, link) in self.links.iter_mut().enumerate() {
                recv(link, i + 1, n, N, &mut buf)?;
                for (a, b) in x.iter_mut().zip(buf.chunks_exact(N)) {
                    *a += from(b.try_into().unwrap());
                }
            }
            // the whole sum is encoded once for all ranks
            let whole = parts.is_none().then(|| encode(x, to));
            for (i, link) in self.links.iter_mut().enumerate() {
                match &whole {
                    Some(out) => send(link, i + 1, out)?,
                    None => send(link, i + 1, &encode(&x[back(i + 1)], to))?,
                }
            }
        } else {
            let link = &mut self.links[0];
            send(link, 0, &encode(x, to))?;
            let mut buf = Vec::new();
            let mine = back(self.world.rank);
            recv(link, 0, mine.len(), N, &mut buf)?;
            for (a, b) in x[mine].iter_mut().zip(buf.chunks_exact(N)) {
                *a = from(b.try_into().unwrap());
            }
        }
        Ok(())
    }
}

/// The rank behind the first of `links` that has closed (see [`Group::gone`]): rank 0's links
/// lead to ranks 1.. in order (`root`), another rank's one link to rank 0.
fn first_closed(links: &[TcpStream], root: bool) -> Option<usize> {
    use std::os::fd::AsRawFd;
    links.iter().enumerate().find_map(|(i, l)| {
        let mut b = 0u8;
        // SAFETY: peeks at most one byte into `b`, which we own, from a socket we hold open;
        // MSG_DONTWAIT makes this call non-blocking without changing the socket's mode.
        let n = unsafe { libc::recv(l.as_raw_fd(), (&raw mut b).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        let closed = match n {
            0 => true,
            n if n > 0 => false,
            _ => {
                let e = std::io::Error::last_os_error();
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
            }
        };
        closed.then_some(if root { i + 1 } else { 0 })
    })
}

/// The message for `x`: its length, then its elements.
fn encode<T: Copy, const N: usize>(x: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + x.len() * N);
    out.extend_from_slice(&(x.len() as u64).to_le_bytes());
    for &v in x {
        out.extend_from_slice(&to(v));
    }
    out
}

fn send(link: &mut TcpStream, peer: usize, msg: &[u8]) -> Result<()> {
    link.write_all(msg).map_err(|e| lost(peer, e))
}

/// Reads `peer`'s message of `n` elements of `size` bytes into `buf`.
fn recv(link: &mut TcpStream, peer: usize, n: usize, size: usize, buf: &mut Vec<u8>) -> Result<()> {
    let mut len = [0u8; 8];
    link.read_exact(&mut len).map_err(|e| lost(peer, e))?;
    let got = u64::from_le_bytes(len) as usize;
    if got != n {
        bail!("rank {peer} sent {got} values where this rank has {n}: the ranks are not running the same model and configuration");
    }
    buf.resize(n * size, 0);
    link.read_exact(buf).map_err(|e| lost(peer, e))
}

/// Reads `peer`'s message of any number of elements of `size` bytes into `buf`.
fn recv_any(link: &mut TcpStream, peer: usize, size: usize, buf: &mut Vec<u8>) -> Result<()> {
    let mut len = [0u8; 8];
    link.read_exact(&mut len).map_err(|e| lost(peer, e))?;
    let n = u64::from_le_bytes(len) as usize;
    // a garbled length must not allocate without bound: at most 2^38 bytes (a model of 2^36
    // f32 weights, far past what host memory sums are for)
    if n.checked_mul(size).is_none_or(|b| b > 1 << 38) {
        bail!("rank {peer} sent a message of {n} values, more than gptrain sends between ranks: is every rank the same gptrain?");
    }
    buf.resize(n * size, 0);
    link.read_exact(buf).map_err(|e| lost(peer, e))
}

/// The error for a connection to `peer` that failed.
fn lost(peer: usize, e: std::io::Error) -> anyhow::Error {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            anyhow::anyhow!("no word from rank {peer} within {TIMEOUT_VAR} (is it stuck? see its output)")
        }
        ErrorKind::UnexpectedEof => anyhow::anyhow!("rank {peer} is gone (its connection closed): it stopped or failed; see its output"),
        _ => anyhow::anyhow!("rank {peer} is gone ({e}): it stopped or failed; see its output"),
    }
}

/// What a rank says when it connects.
fn hello(world: &World, check: u64) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&(world.rank as u32).to_le_bytes());
    h[8..12].copy_from_slice(&(world.size as u32).to_le_bytes());
    h[12..].copy_from_slice(&check.to_le_bytes());
    h
}

/// Rank 0: listens at `addr`'s port (on every interface) until each other rank has connected.
fn accept_all(world: &World, addr: &str, check: u64, timeout: Duration) -> Result<Vec<TcpStream>> {
    let port = addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).with_context(|| format!("{addr:?} is not host:port"))?;
    // every interface: IPv6 ones where the rendezvous host has only IPv6 addresses (an IPv6
    // literal, or a name that resolves so), else IPv4 ones (the others try every address)
    let v6 = addr.to_socket_addrs().map(|a| a.collect::<Vec<_>>()).is_ok_and(|a| !a.is_empty() && a.iter().all(|a| a.is_ipv6()));
    let any = if v6 || addr.starts_with('[') { "::" } else { "0.0.0.0" };
    let listener = TcpListener::bind((any, port))
        .with_context(|| format!("rank 0 cannot listen on port {port} for the other ranks; set {ADDR_VAR}=host:port to a free port"))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let mut links: Vec<Option<TcpStream>> = (1..world.size).map(|_| None).collect();
    // connections whose 20-byte hello has not all come yet, each with what has: read without
    // waiting, so one that never says it (a port scan, a health check) holds nobody up
    // (a connection that has said nothing for HELLO_WAIT is closed: a rank says it at once)
    let mut pending: Vec<(TcpStream, std::net::SocketAddr, Vec<u8>, Instant)> = Vec::new();
    while links.iter().any(Option::is_none) {
        let mut idle = true;
        match listener.accept() {
            Ok((s, from)) => {
                s.set_nonblocking(true)?;
                pending.push((s, from, Vec::with_capacity(20), Instant::now()));
                idle = false;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("rank 0 could not accept a connection"),
        }
        let mut i = 0;
        while i < pending.len() {
            let (s, _, got, since) = &mut pending[i];
            if since.elapsed() > HELLO_WAIT {
                pending.swap_remove(i);
                continue;
            }
            let mut buf = [0u8; 20];
            let want = 20 - got.len();
            match s.read(&mut buf[..want]) {
                Ok(0) => {
                    pending.swap_remove(i); // closed before saying hello: not a gptrain rank
                    continue;
                }
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    idle = false;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    pending.swap_remove(i);
                    continue;
                }
            }
            if got.len() < 20 {
                i += 1;
                continue;
            }
            let (s, from, got, _) = pending.swap_remove(i);
            let h: [u8; 20] = got.try_into().unwrap();
            if h[..4] != MAGIC.to_le_bytes() {
                continue; // not a gptrain rank (another program): ignore it
            }
            let field = |a: usize| u32::from_le_bytes(h[a..a + 4].try_into().unwrap()) as usize;
            let (rank, size, their) = (field(4), field(8), u64::from_le_bytes(h[12..].try_into().unwrap()));
            if size != world.size || rank == 0 || rank >= world.size {
                bail!("a process from {from} says it is rank {rank} of {size}, in a run of {} ranks", world.size);
            }
            if their != check {
                bail!("rank {rank} runs another configuration than rank 0 (model, data, batch or seed differ): every rank must be given the same settings");
            }
            if links[rank - 1].is_some() {
                bail!("two processes say they are rank {rank}");
            }
            let mut s = s;
            s.set_nonblocking(false)?;
            s.write_all(&hello(world, check)).context("rank 0 could not answer a rank")?;
            links[rank - 1] = Some(s);
        }
        if links.iter().any(Option::is_none) && Instant::now() > deadline {
            let missing: Vec<String> = (1..world.size).filter(|r| links[r - 1].is_none()).map(|r| r.to_string()).collect();
            bail!("rank(s) {} did not connect to rank 0 at {addr} within {}s ({TIMEOUT_VAR})", missing.join(", "), timeout.as_secs());
        }
        if idle {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(links.into_iter().flatten().collect())
}

/// Another rank: connects to rank 0 at `addr` (trying again until it listens) and is accepted.
fn join(world: &World, addr: &str, check: u64, timeout: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        // every address the name resolves to (IPv6 and IPv4), in the resolver's order
        let last = match addr.to_socket_addrs() {
            Ok(addrs) => {
                let mut last = format!("{addr} resolves to no address");
                for a in addrs {
                    match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
                        Ok(s) => return greet(s, world, addr, check, timeout),
                        Err(e) => last = e.to_string(),
                    }
                }
                last
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!(
                "rank {} could not reach rank 0 at {addr} within {}s ({last}); set MASTER_ADDR/MASTER_PORT or {ADDR_VAR}",
                world.rank,
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Says hello to rank 0 over `s` and reads its answer.
fn greet(mut s: TcpStream, world: &World, addr: &str, check: u64, timeout: Duration) -> Result<TcpStream> {
    s.set_read_timeout(Some(timeout)).ok();
    s.write_all(&hello(world, check)).context("could not greet rank 0")?;
    let mut h = [0u8; 20];
    s.read_exact(&mut h).map_err(|_| anyhow::anyhow!("rank 0 refused rank {} (see rank 0's output for why)", world.rank))?;
    if h[..4] != MAGIC.to_le_bytes() {
        bail!("{addr} is not a gptrain rank 0");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Span;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn world(rank: usize, size: usize) -> World {
        World { rank, size, local_rank: rank, local_size: size, source: "test" }
    }

    /// Runs `f` on `size` ranks (threads), each with its group; their results in rank order.
    fn ranks<R: Send + 'static>(size: usize, check: impl Fn(usize) -> u64, f: fn(&mut Group) -> Result<R>) -> Vec<Result<R>> {
        let addr = format!("127.0.0.1:{}", free_port());
        let handles: Vec<_> = (0..size)
            .map(|r| {
                let (addr, check) = (addr.clone(), check(r));
                std::thread::spawn(move || {
                    Group::connect(&world(r, size), &addr, check, Duration::from_secs(20)).and_then(|mut g| f(&mut g))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// Rank 0 late at a barrier by more than the group's timeout: a plain barrier gives up on
    /// it, one allowing that much longer waits for it.
    #[test]
    fn a_barrier_allowing_longer_waits_out_a_late_rank_0() {
        for (allow, ok) in [(Duration::ZERO, false), (Duration::from_secs(10), true)] {
            let addr = format!("127.0.0.1:{}", free_port());
            let join = |r: usize| {
                let addr = addr.clone();
                std::thread::spawn(move || -> Result<()> {
                    let mut g = Group::connect(&world(r, 2), &addr, 7, Duration::from_millis(800))?;
                    if r == 0 {
                        std::thread::sleep(Duration::from_millis(1500)); // a slow last checkpoint
                    }
                    g.barrier_allowing(allow)
                })
            };
            let (r0, r1) = (join(0), join(1));
            let (r0, r1) = (r0.join().unwrap(), r1.join().unwrap());
            assert_eq!(r1.is_ok(), ok, "{r1:?}");
            if ok {
                assert!(r0.is_ok(), "{r0:?}");
            } else {
                assert!(r1.unwrap_err().to_string().contains("no word from rank 0 within GPTRAIN_DIST_TIMEOUT_S ("));
            }
        }
    }

    #[test]
    fn sums_are_in_rank_order_and_the_same_on_every_rank() {
        let out = ranks(
            3,
            |_| 7,
            |g| {
                let r = g.world().rank;
                // 1e8 + 1 - 1e8 in f32 is 0 in rank order (1e8 + 1 rounds to 1e8), 1 in another
                let mut x = vec![[1e8f32, 1.0, -1e8][r], r as f32];
                g.sum_f32(&mut x)?;
                let mut y = [0.5 * r as f64];
                g.sum_f64(&mut y)?;
                let all = g.gather_f64(&[r as f64, -0.25 * r as f64])?;
                let mut root = [10.0 + r as f64, 7.5];
                g.broadcast_f64(&mut root)?;
                Ok((x, y[0], all, root))
            },
        );
        for o in out {
            let (x, y, all, root) = o.unwrap();
            assert_eq!(x, vec![0.0, 3.0]);
            assert_eq!(y, 1.5);
            assert_eq!(all, vec![0.0, -0.0, 1.0, -0.25, 2.0, -0.5]);
            assert_eq!(root, [10.0, 7.5]);
        }
    }

    #[test]
    fn gathers_copy_each_ranks_part_in_rank_order() {
        let out = ranks(
            3,
            |_| 7,
            |g| {
                let r = g.world().rank;
                // parts of different lengths (rank 2's empty), a negative zero and a NaN: copied
                let mine: Vec<f32> = [vec![-0.0, 1.5], vec![f32::NAN], vec![]][r].clone();
                let all = g.gather_f32(&mine, true)?.unwrap();
                let root = g.gather_f32(&[r as f32; 2], false)?;
                // the sum's parts to their owners: rank 1 owns 1..3, rank 2 nothing
                let parts = [Span::new(0, 1), Span::new(1, 2), Span::new(3, 0)];
                let mut x = [1f32, 10.0, 100.0].map(|v| v * (r + 1) as f32).to_vec();
                x[r] += 0.5;
                g.sum_f32_to_owners(&mut x, &parts)?;
                Ok((all, root, x))
            },
        );
        for (r, o) in out.into_iter().enumerate() {
            let (all, root, x) = o.unwrap();
            // rank 0 has the whole sum, the others their part of it and their own values elsewhere
            let sum = [6.5f32, 60.5, 600.5];
            let mut want = [1f32, 10.0, 100.0].map(|v| v * (r + 1) as f32).to_vec();
            want[r] += 0.5;
            match r {
                0 => want = sum.to_vec(),
                1 => want[1..3].copy_from_slice(&sum[1..3]),
                _ => {}
            }
            assert_eq!(x, want, "rank {r}");
            let bits: Vec<u32> = all.iter().map(|x| x.to_bits()).collect();
            assert_eq!(bits, vec![(-0.0f32).to_bits(), 1.5f32.to_bits(), f32::NAN.to_bits()]);
            assert_eq!(root, (r == 0).then(|| vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0]));
        }
    }

    #[test]
    fn ranks_meet_at_an_ipv6_address() {
        let Ok(probe) = TcpListener::bind("[::1]:0") else {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "ranks_meet_at_an_ipv6_address: skipped: this machine has no IPv6 loopback");
            return;
        };
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let addr = rendezvous_addr(&world(0, 2), &|k: &str| match k {
            "MASTER_ADDR" => Some("::1".into()),
            "MASTER_PORT" => Some(port.to_string()),
            _ => None,
        })
        .unwrap();
        let handles: Vec<_> = (0..2)
            .map(|r| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let mut g = Group::connect(&world(r, 2), &addr, 1, Duration::from_secs(20))?;
                    let mut x = [r as f64 + 1.0];
                    g.sum_f64(&mut x)?;
                    Ok::<f64, anyhow::Error>(x[0])
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap(), 3.0);
        }
    }

    #[test]
    fn connections_that_are_not_ranks_hold_nobody_up() {
        use std::io::Write;
        let addr = format!("127.0.0.1:{}", free_port());
        let a = addr.clone();
        let root = std::thread::spawn(move || Group::connect(&world(0, 2), &a, 5, Duration::from_secs(20)).map(|_| ()));
        // before rank 1: one that connects and says nothing, one that says 3 bytes and stays,
        // one that says 20 bytes of something else, one that connects and leaves
        let dial = || loop {
            if let Ok(s) = TcpStream::connect(&addr) {
                break s;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let silent = dial();
        let mut partial = dial();
        partial.write_all(b"gpt").unwrap();
        dial().write_all(&[7u8; 20]).unwrap();
        drop(dial());
        let t0 = Instant::now();
        let a = addr.clone();
        let one = std::thread::spawn(move || Group::connect(&world(1, 2), &a, 5, Duration::from_secs(20)).map(|_| ()));
        one.join().unwrap().unwrap();
        root.join().unwrap().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(3), "rank 1 waited {:?} behind the strays", t0.elapsed());
        drop((silent, partial));
    }

    #[test]
    fn a_rank_with_another_configuration_is_refused() {
        let out = ranks(2, |r| r as u64, |_| Ok(()));
        assert!(format!("{:#}", out[0].as_ref().unwrap_err()).contains("rank 1 runs another configuration than rank 0"));
        assert!(out[1].is_err());
    }

    #[test]
    fn a_rank_that_stops_is_named_by_the_others() {
        let out = ranks(
            2,
            |_| 1,
            |g| {
                if g.world().rank == 1 {
                    return Ok(()); // leaves: its connection closes
                }
                g.sum_f32(&mut [1.0])
            },
        );
        let e = format!("{:#}", out[0].as_ref().unwrap_err());
        assert!(e.contains("rank 1 is gone"), "{e}");
    }

    #[test]
    fn a_closed_connection_is_seen_without_reading() {
        let out = ranks(
            2,
            |_| 1,
            |g| {
                if g.world().rank == 1 {
                    g.barrier()?;
                    g.barrier()?; // then leaves: its connection closes
                    return Ok(((None, None), (None, None)));
                }
                g.barrier()?;
                // a watcher (as the GPU backend keeps for its NCCL sums) sees what the group sees
                let watcher = g.watcher()?;
                std::thread::sleep(Duration::from_millis(100)); // rank 1's next message waits unread
                let alive = (g.gone(), watcher());
                g.barrier()?; // and is still there to read
                let t0 = Instant::now();
                while watcher().is_none() && t0.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok((alive, (g.gone(), watcher())))
            },
        );
        assert_eq!(out[0].as_ref().unwrap(), &((None, None), (Some(1), Some(1))));
        assert!(out[1].is_ok());
    }

    #[test]
    fn the_address_follows_the_launchers_variables() {
        use crate::dist::env;
        let w = world(0, 2);
        assert_eq!(rendezvous_addr(&w, &env(&[])).unwrap(), "127.0.0.1:29500");
        assert_eq!(rendezvous_addr(&w, &env(&[("MASTER_ADDR", "node1"), ("MASTER_PORT", "1234")])).unwrap(), "node1:1234");
        assert_eq!(rendezvous_addr(&w, &env(&[("MASTER_ADDR", "fd00::1"), ("MASTER_PORT", "1234")])).unwrap(), "[fd00::1]:1234");
        assert_eq!(rendezvous_addr(&w, &env(&[("MASTER_ADDR", "[::1]")])).unwrap(), "[::1]:29500");
        assert_eq!(rendezvous_addr(&w, &env(&[(ADDR_VAR, "[::1]:5")])).unwrap(), "[::1]:5");
        let e = rendezvous_addr(&w, &env(&[(ADDR_VAR, "::1:5")])).unwrap_err().to_string();
        assert!(e.contains("an IPv6 address goes in brackets before its port"), "{e}");
        let agent = [("MASTER_ADDR", "h"), ("MASTER_PORT", "29400"), ("TORCHELASTIC_USE_AGENT_STORE", "True")];
        assert_eq!(rendezvous_addr(&w, &env(&agent)).unwrap(), "h:29401");
        assert_eq!(rendezvous_addr(&w, &env(&[(ADDR_VAR, "x:1"), ("MASTER_PORT", "5")])).unwrap(), "x:1");
        assert!(rendezvous_addr(&w, &env(&[("MASTER_PORT", "p")])).is_err());
        // ranks on two machines: where rank 0 is must be said
        let two_machines = World { local_size: 1, ..w };
        let e = rendezvous_addr(&two_machines, &env(&[])).unwrap_err().to_string();
        assert!(e.contains("span several machines") && e.contains("MASTER_ADDR"), "{e}");
    }
}
