//! The netlink batcher: one `Firewall::add` of 1 000 and of 10 000 fresh
//! elements (one jail, IPv4, a 1 h timeout), i.e. the kernel round trip a
//! wakeup full of bans costs. Each iteration starts from an empty set (the
//! removal is not timed). Root only: it runs in a private network
//! namespace, entered with unshare(CLONE_NEWNET) by the bench thread, so
//! the host's ruleset is never touched; without root it says so and skips.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use banjo::config::Config;
use banjo::firewall::{Element, Firewall};
use banjo::jail::{Jail, JailId};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nix::sched::{unshare, CloneFlags};

/// One jail as the configuration loader builds it (so this bench keeps
/// compiling when `Jail` gains fields).
fn jails() -> Result<Vec<Jail>, String> {
    let dir = std::env::temp_dir().join(format!("banjo-netlink-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("banjo.toml");
    let text = format!(
        "[daemon]\nstate_dir = \"{0}/state\"\nsocket = \"{0}/banjo.sock\"\n\n\
         [jail.bench]\nfailregex = ['x <HOST>']\nport = \"smtp\"\nbantime = \"1h\"\n",
        dir.display()
    );
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    let config = Config::load(&path).map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(config?.jails)
}

fn elements(n: usize) -> (Vec<Element>, Vec<IpAddr>) {
    let ips: Vec<IpAddr> = (1..=n as u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0A64_0000 | i)))
        .collect();
    let elems = ips
        .iter()
        .map(|&ip| Element {
            jail: JailId(0),
            ip,
            timeout: Some(Duration::from_secs(3600)),
            expires: None,
        })
        .collect();
    (elems, ips)
}

fn firewall() -> Result<Firewall, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (nftables in a private network namespace)".into());
    }
    // Only this thread moves: criterion measures on the thread that calls us.
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
    let mut fw = Firewall::open("bench").map_err(|e| e.to_string())?;
    fw.setup(&jails()?).map_err(|e| e.to_string())?;
    Ok(fw)
}

fn add(c: &mut Criterion) {
    let mut fw = match firewall() {
        Ok(fw) => fw,
        Err(why) => {
            println!("skipped the netlink benches: {why}");
            return;
        }
    };
    let mut group = c.benchmark_group("firewall_add");
    group.sample_size(20);
    for n in [1_000usize, 10_000] {
        let (elems, ips) = elements(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if let Err(e) = fw.remove(JailId(0), &ips) {
                        panic!("emptying the set: {e}");
                    }
                    let started = Instant::now();
                    if let Err(e) = fw.add(&elems) {
                        panic!("Firewall::add of {n} elements: {e}");
                    }
                    total += started.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, add);
criterion_main!(benches);
