//! What a row looks at in an outcome, normalised only where the two must
//! differ for reasons outside the spec (ids, device numbers, peer group
//! numbers, paths the host's kernel lacks).

use std::path::Path;

use crate::runner::Outcome;

pub enum Observe {
    /// A probe's output as printed.
    Probe(&'static str),
    /// The lines of a probe that start with a prefix.
    Lines(&'static str, &'static str),
    /// The mountinfo line of a mount point, without ids and device numbers.
    Mount(&'static str),
    /// The mountinfo lines at or under a mount point.
    MountsUnder(&'static str),
    /// A mount's point, per-mount options and propagation, not what is
    /// mounted (a host directory under runc, virtio-fs in the guest).
    MountOpts(&'static str),
    /// A mount's propagation alone.
    Propagation(&'static str),
    /// The mount points of the container's table, less cgroup v1's
    /// per-controller mounts and /proc files the host's kernel lacks.
    Mountpoints,
    /// The paths of /proc/self/cgroup (v1 lists one per hierarchy).
    CgroupPaths,
    /// The exit code of `run`.
    Code,
    /// How `run` or `create` failed.
    Failure,
    /// The fields of `state` both keep.
    State,
    /// Whether the state pid's namespace of a type is not ours.
    Ns(&'static str),
}

/// A mountinfo line as fields: root, point, options, optional fields
/// (peer group numbers dropped), fs type, source, super options.
struct MountLine {
    root: String,
    point: String,
    options: String,
    propagation: String,
    rest: String,
}

fn parse(line: &str) -> Option<MountLine> {
    let (left, right) = line.split_once(" - ")?;
    let f: Vec<&str> = left.split(' ').collect();
    if f.len() < 6 {
        return None;
    }
    let propagation: Vec<String> = f[6..]
        .iter()
        .map(|tag| tag.split(':').next().unwrap_or(tag).to_string())
        .collect();
    Some(MountLine {
        root: f[3].into(),
        point: f[4].into(),
        options: f[5].into(),
        propagation: if propagation.is_empty() {
            "private".into()
        } else {
            propagation.join(",")
        },
        rest: right.into(),
    })
}

fn mounts(o: &Outcome) -> Vec<MountLine> {
    o.probe("mountinfo").lines().filter_map(parse).collect()
}

fn full(m: &MountLine) -> String {
    format!(
        "{} {} {} [{}] - {}",
        m.root, m.point, m.options, m.propagation, m.rest
    )
}

fn or_absent(lines: Vec<String>, o: &Outcome) -> String {
    if o.code != Some(0) && o.stdout.is_empty() {
        return format!("not run: {}", o.failure());
    }
    if lines.is_empty() {
        return "(absent)".into();
    }
    lines.join("\n")
}

impl Observe {
    pub fn of(&self, o: &Outcome) -> String {
        let select = |keep: &dyn Fn(&MountLine) -> bool, show: &dyn Fn(&MountLine) -> String| {
            or_absent(mounts(o).iter().filter(|m| keep(m)).map(show).collect(), o)
        };
        match self {
            Observe::Probe(label) => o.probe(label),
            Observe::Lines(label, prefix) => or_absent(
                o.probe(label)
                    .lines()
                    .filter(|l| l.starts_with(prefix))
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect(),
                o,
            ),
            Observe::Mount(point) => select(&|m| m.point == *point, &full),
            Observe::MountsUnder(point) => select(
                &|m| m.point == *point || m.point.starts_with(&format!("{point}/")),
                &full,
            ),
            Observe::MountOpts(point) => select(&|m| m.point == *point, &|m| {
                format!("{} {} [{}]", m.point, m.options, m.propagation)
            }),
            Observe::Propagation(point) => {
                select(&|m| m.point == *point, &|m| m.propagation.clone())
            }
            Observe::Mountpoints => {
                let mut points: Vec<String> = mounts(o)
                    .into_iter()
                    .map(|m| m.point)
                    .filter(|p| !p.starts_with("/sys/fs/cgroup/"))
                    .filter(|p| !p.starts_with("/proc/") || Path::new(p).exists())
                    .collect();
                points.sort();
                or_absent(vec![points.join(" ")], o)
            }
            Observe::CgroupPaths => {
                let mut paths: Vec<&str> = Vec::new();
                let text = o.probe("cgroup");
                for l in text.lines() {
                    let path = l.splitn(3, ':').nth(2).unwrap_or(l);
                    if !paths.contains(&path) {
                        paths.push(path);
                    }
                }
                paths.join("\n")
            }
            Observe::Code => match o.code {
                Some(c) => format!("exit {c}"),
                None => "killed".into(),
            },
            Observe::Failure => o.failure(),
            Observe::State => match &o.state {
                Some(s) => serde_json::to_string(s).unwrap(),
                None => o.failure(),
            },
            Observe::Ns(kind) => match o.ns_differs.get(*kind) {
                Some(true) => "a namespace of its own".into(),
                Some(false) => "the caller's".into(),
                None => o.failure(),
            },
        }
    }
}
