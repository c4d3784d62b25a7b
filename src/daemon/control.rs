//! Answers to control-socket requests, inside the daemon's loop.
//!
//! The JSON shapes here are the documented, stable output of
//! `banjo status --json` and `banjo stats --json` (see the README).

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};

use super::lines::Batch;
use super::{element, now_micros, Daemon, Mode, Pipeline};
use crate::control::{Peer, Request, Response};
use crate::jail::JailId;
use crate::net::IpNet;

impl Daemon {
    /// Answers one request from `peer`.
    pub(super) fn handle(
        &mut self,
        p: &mut Pipeline,
        mode: &mut Mode,
        peer: &Peer,
        request: Request,
    ) -> Response {
        if !peer.may(&request) {
            return Response::error(format!(
                "permission denied: uid {} may not do this (root only{})",
                peer.uid,
                if request.is_read_only() {
                    " or the socket group"
                } else {
                    ""
                }
            ));
        }
        let result = match request {
            Request::Status { jail: None } => self.status_all(p),
            Request::Status { jail: Some(name) } => self.status_jail(p, &name),
            Request::Ban {
                jail,
                ips,
                duration,
            } => self.manual_ban(p, &jail, &ips, duration.as_deref()),
            Request::Unban { ips, jail } => self.manual_unban(p, &ips, jail.as_deref()),
            Request::Reload => self
                .reload(p, mode)
                .map(|jails| json!({ "jails": jails }))
                .map_err(|e| e.to_string()),
            Request::Stats => Ok(self.stats(p)),
        };
        match result {
            Ok(data) => Response::ok(data),
            Err(message) => Response::error(message),
        }
    }

    /// A jail's line of `banjo status`; `refused` is `null` when its
    /// counter is missing from the kernel.
    fn jail_summary(&mut self, p: &Pipeline, id: JailId, banned: usize) -> Result<Value, String> {
        let refused = self.firewall.refused(id).map_err(|e| e.to_string())?;
        let name = p.jail_name(id);
        let totals = self.per_jail.get(name).copied().unwrap_or_default();
        Ok(json!({
            "name": name,
            "currently_failed": p.tracker.currently_failed(id, now_micros()),
            "total_failed": totals.failures,
            "currently_banned": banned,
            "total_banned": totals.bans,
            "refused": refused.map(|r| json!({ "packets": r.packets, "bytes": r.bytes })),
        }))
    }

    fn status_all(&mut self, p: &Pipeline) -> Result<Value, String> {
        let mut jails = Vec::new();
        for i in 0..p.config.jails.len() {
            let id = JailId(i as u16);
            let banned = self.firewall.list(id).map_err(|e| e.to_string())?.len()
                + self
                    .firewall
                    .list_prefixes(id)
                    .map_err(|e| e.to_string())?
                    .len();
            jails.push(self.jail_summary(p, id, banned)?);
        }
        Ok(json!({ "jails": jails }))
    }

    fn status_jail(&mut self, p: &Pipeline, name: &str) -> Result<Value, String> {
        let id = p.jail_id(name).ok_or_else(|| unknown_jail(p, name))?;
        let mut listed = self.firewall.list(id).map_err(|e| e.to_string())?;
        listed.sort_by_key(|e| e.ip);
        let prefixes = self.firewall.list_prefixes(id).map_err(|e| e.to_string())?;
        let mut summary = self.jail_summary(p, id, listed.len() + prefixes.len())?;
        let mut banned: Vec<Value> = listed
            .iter()
            .map(|e| {
                json!({
                    "ip": e.ip.to_string(),
                    "timeout": e.timeout.map(|d| d.as_secs()),
                    "expires": e.expires.map(|d| d.as_secs()),
                    "bans": p.tracker.ban_count(id, e.ip),
                })
            })
            .collect();
        banned.extend(prefixes.iter().map(|e| {
            json!({
                "ip": e.net.to_string(),
                "timeout": e.timeout.map(|d| d.as_secs()),
                "expires": e.expires.map(|d| d.as_secs()),
                "bans": 1,
            })
        }));
        if let Some(obj) = summary.as_object_mut() {
            obj.insert("banned".into(), Value::Array(banned));
        }
        Ok(summary)
    }

    fn manual_ban(
        &mut self,
        p: &mut Pipeline,
        jail: &str,
        ips: &[String],
        duration: Option<&str>,
    ) -> Result<Value, String> {
        let id = p.jail_id(jail).ok_or_else(|| unknown_jail(p, jail))?;
        let bantime = match duration {
            Some(d) => Some(crate::config::parse_bantime(d).ok_or_else(|| {
                format!("{d:?} is not a duration (e.g. 600, 10m, 1h, 1d, or -1 for permanent)")
            })?),
            None => None,
        };
        let ips = parse_ips(ips)?;
        if let Some(ip) = ips.iter().find(|ip| p.tracker.is_ignored(id, **ip)) {
            return Err(format!(
                "{ip} is in jail {jail}'s ignoreip (or is this host's own address): not banned"
            ));
        }
        let now = now_micros();
        let bans: Vec<_> = ips
            .iter()
            .map(|ip| p.tracker.ban(id, *ip, now, bantime))
            .collect();
        let elements: Vec<_> = bans.iter().map(element).collect();
        if let Err(e) = self.firewall.add(&elements) {
            for ban in &bans {
                p.tracker.forget_ban(ban.jail, ban.ip);
            }
            return Err(e.to_string());
        }
        let mut lines = Batch::new(&p.names);
        for ban in &bans {
            let line = self.ban_line(p, ban, true);
            self.queue(&mut lines, line);
        }
        self.emit(lines);
        let sent = self.send_prefixes(p).map_err(|e| e.to_string());
        self.write_log(p);
        sent?;
        self.dirty = true;
        Ok(json!({
            "banned": bans.iter().map(|b| json!({
                "jail": jail,
                "ip": b.ip.to_string(),
                "bantime": b.bantime.secs(),
            })).collect::<Vec<_>>()
        }))
    }

    fn manual_unban(
        &mut self,
        p: &mut Pipeline,
        ips: &[String],
        jail: Option<&str>,
    ) -> Result<Value, String> {
        let (nets, ips): (Vec<&String>, Vec<&String>) = ips.iter().partition(|s| s.contains('/'));
        let nets: Vec<IpNet> = nets
            .iter()
            .map(|s| s.parse::<IpNet>().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let ips: Vec<String> = ips.into_iter().cloned().collect();
        let ips = if ips.is_empty() && !nets.is_empty() {
            Vec::new()
        } else {
            parse_ips(&ips)?
        };
        let jails: Vec<JailId> = match jail {
            Some(name) => vec![p.jail_id(name).ok_or_else(|| unknown_jail(p, name))?],
            None => (0..p.config.jails.len())
                .map(|i| JailId(i as u16))
                .collect(),
        };
        let mut unbanned = Vec::new();
        for &id in &jails {
            let known: Vec<IpNet> = nets
                .iter()
                .copied()
                .filter(|n| p.tracker.active_prefix_ban(id, *n).is_some())
                .collect();
            if known.is_empty() {
                continue;
            }
            self.firewall
                .remove_prefixes(id, &known)
                .map_err(|e| e.to_string())?;
            let name = p.jail_name(id).to_string();
            for net in known {
                p.tracker.forget_prefix_ban(id, net);
                self.log_unban(p, &name, &net, "");
                unbanned.push(json!({ "jail": name, "ip": net.to_string() }));
            }
        }
        for id in jails {
            if ips.is_empty() {
                break;
            }
            let present: Vec<IpAddr> = self
                .firewall
                .list(id)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|e| e.ip.to_canonical())
                .filter(|ip| ips.contains(ip))
                .collect();
            let known: Vec<IpAddr> = ips
                .iter()
                .copied()
                .filter(|ip| p.tracker.active_ban(id, *ip).is_some() || present.contains(ip))
                .collect();
            if known.is_empty() {
                continue;
            }
            self.firewall
                .remove(id, &known)
                .map_err(|e| e.to_string())?;
            let name = p.jail_name(id).to_string();
            for ip in known {
                p.tracker.forget_ban(id, ip);
                self.log_unban(p, &name, &ip, "");
                unbanned.push(json!({ "jail": name, "ip": ip.to_string() }));
            }
        }
        self.dirty = true;
        if unbanned.is_empty() {
            return Err("not banned".into());
        }
        Ok(json!({ "unbanned": unbanned }))
    }

    fn stats(&self, p: &Pipeline) -> Value {
        let lag = self
            .last_entry_time
            .map(|t| Duration::from_micros(now_micros().saturating_sub(t)).as_secs_f64());
        let jails: Vec<Value> = p
            .config
            .jails
            .iter()
            .map(|j| {
                let t = self.per_jail.get(&j.name).copied().unwrap_or_default();
                json!({ "name": j.name, "failures": t.failures, "bans": t.bans })
            })
            .collect();
        json!({
            "uptime": self.started.elapsed().as_secs(),
            "lines": self.counters.lines,
            "failures": self.counters.failures,
            "ignored": self.counters.ignored,
            "not_an_address": self.counters.not_an_address,
            "bans": self.counters.bans,
            "unbans": self.counters.unbans,
            "errors": self.errors,
            "tracked": p.tracker.tracked(),
            "active_bans": p.tracker.active_bans().count(),
            "journal_lag": lag,
            "jails": jails,
        })
    }
}

fn unknown_jail(p: &Pipeline, name: &str) -> String {
    let names: Vec<&str> = p.config.jails.iter().map(|j| j.name.as_str()).collect();
    format!("no jail {name:?} (jails: {})", names.join(", "))
}

fn parse_ips(ips: &[String]) -> Result<Vec<IpAddr>, String> {
    if ips.is_empty() {
        return Err("no address given".into());
    }
    ips.iter()
        .map(|s| {
            s.parse::<IpAddr>()
                .map(|ip| ip.to_canonical())
                .map_err(|_| format!("{s:?} is not an IP address"))
        })
        .collect()
}
