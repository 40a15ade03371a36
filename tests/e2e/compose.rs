//! `docker-compose.yml` and the configs it mounts, checked for what `docker compose config` and a
//! first `up` would trip over (no Docker engine runs here): every service and its references,
//! ports, volumes, the roles' agreement on the stream layout, and the Prometheus targets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn services() -> BTreeMap<String, Value> {
    let compose = yaml("docker-compose.yml");
    compose["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_string(), v.clone()))
        .collect()
}

/// Names a service answers to on the compose network: its own and its aliases.
fn hostnames(services: &BTreeMap<String, Value>) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = services.keys().cloned().collect();
    for s in services.values() {
        names.extend(strings(&s["networks"]["default"]["aliases"]));
    }
    names
}

fn env<'a>(service: &'a Value, key: &str) -> Option<&'a str> {
    service["environment"][key].as_str()
}

#[test]
fn compose_has_the_production_shape() {
    let services = services();
    for name in [
        "nats-1",
        "nats-2",
        "nats-3",
        "nats-exporter-1",
        "nats-exporter-2",
        "nats-exporter-3",
        "gateway-1",
        "gateway-2",
        "persister-1",
        "persister-2",
        "presence-1",
        "presence-2",
        "webhooks-1",
        "lb",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    for (name, s) in &services {
        let build = s["build"].as_str();
        assert!(
            s["image"].is_string() || build.is_some(),
            "{name}: no image or build"
        );
        if let Some(dir) = build {
            assert!(
                root().join(dir).join("Dockerfile").is_file(),
                "{name}: no Dockerfile in {dir}"
            );
        }
    }
    // Roles: the same stream layout everywhere, R3, the whole cluster as seeds.
    let hosts = hostnames(&services);
    let roles: Vec<_> = services
        .iter()
        .filter(|(_, s)| s["build"].is_string())
        .collect();
    assert_eq!(
        roles.len(),
        7,
        "two gateways, two persisters, two presence services, a webhook role"
    );
    for (name, s) in &roles {
        assert_eq!(env(s, "CHATFABRIC_REPLICAS"), Some("3"), "{name}");
        assert_eq!(env(s, "CHATFABRIC_PARTITIONS"), Some("4"), "{name}");
        let urls = env(s, "CHATFABRIC_NATS_URL").expect("CHATFABRIC_NATS_URL");
        let seeds: Vec<&str> = urls.split(',').collect();
        assert_eq!(seeds.len(), 3, "{name}: {urls}");
        // Each role connects as its own NATS user (`<role>:<password>@`).
        let role = name.trim_end_matches(|c: char| c == '-' || c.is_ascii_digit());
        for url in seeds {
            let (creds, address) = url
                .trim_start_matches("nats://")
                .split_once('@')
                .unwrap_or_else(|| panic!("{name}: {url} has no credentials"));
            assert!(creds.starts_with(&format!("{role}:")), "{name}: {url}");
            let host = address.split(':').next().unwrap_or_default();
            assert!(
                host.starts_with("nats-") && hosts.contains(host),
                "{name}: {url}"
            );
        }
    }
    // The balancer points at the gateways.
    let lb = &services["lb"];
    for key in ["GATEWAY_1", "GATEWAY_2"] {
        let target = env(lb, key).unwrap_or_else(|| panic!("lb: {key}"));
        let host = target.split(':').next().unwrap_or_default();
        assert!(
            host.starts_with("gateway-") && hosts.contains(host),
            "lb {key}: {target}"
        );
    }
}

#[test]
fn compose_references_resolve() {
    let compose = yaml("docker-compose.yml");
    let services = services();
    let hosts = hostnames(&services);
    let volumes: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .expect("volumes")
        .keys()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    let mut host_ports = BTreeSet::new();
    let mut used_volumes = BTreeSet::new();
    for (name, s) in &services {
        let deps: Vec<String> = match &s["depends_on"] {
            Value::Sequence(_) => strings(&s["depends_on"]),
            Value::Mapping(m) => m
                .keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect(),
            Value::Null => vec![],
            other => panic!("{name}: depends_on {other:?}"),
        };
        for d in deps {
            assert!(services.contains_key(&d), "{name} depends on unknown {d}");
            assert_ne!(&d, name, "{name} depends on itself");
            if let Some(cond) = s["depends_on"][d.as_str()]["condition"].as_str() {
                assert!(
                    cond != "service_healthy" || !services[&d]["healthcheck"].is_null(),
                    "{name} waits for {d} to be healthy, which has no healthcheck"
                );
            }
        }
        for p in strings(&s["ports"]) {
            let (host, container) = p.split_once(':').unwrap_or_else(|| panic!("{name}: {p}"));
            assert!(
                host.parse::<u16>().is_ok() && container.parse::<u16>().is_ok(),
                "{name}: {p}"
            );
            assert!(
                host_ports.insert(host.to_string()),
                "{name}: host port {host} taken twice"
            );
        }
        for v in strings(&s["volumes"]) {
            let source = v.split(':').next().unwrap_or_default();
            if source.starts_with("./") {
                assert!(
                    root().join(source).exists(),
                    "{name} mounts missing {source}"
                );
            } else {
                assert!(
                    volumes.contains(source),
                    "{name} uses undeclared volume {source}"
                );
                used_volumes.insert(source.to_string());
            }
        }
    }
    assert_eq!(used_volumes, volumes, "declared volumes nobody uses");
    // The NATS routes name the cluster's nodes.
    for n in 1..=3 {
        let conf = std::fs::read_to_string(root().join(format!("nats/config/cluster-{n}.conf")))
            .expect("cluster conf");
        for route in conf
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nats://"))
        {
            let host = route.split(':').next().unwrap_or_default();
            assert!(
                hosts.contains(host),
                "cluster-{n}.conf routes to unknown host {host}"
            );
        }
    }
}

#[test]
fn prometheus_scrapes_every_role_and_nats_node_of_compose() {
    let services = services();
    let hosts = hostnames(&services);
    let prom = yaml("deploy/prometheus/prometheus.yml");
    // Static targets must run on a plain `docker compose up` (else they show as down); services
    // of a profile are found through DNS, so they are targets only when their profile runs.
    let in_profile = |host: &str| services.get(host).is_some_and(|s| !s["profiles"].is_null());
    let mut scraped = BTreeSet::new();
    for job in prom["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
    {
        let name = job["job_name"].as_str().expect("job_name");
        let statics = job["static_configs"].as_sequence().into_iter().flatten();
        for t in statics.flat_map(|sc| strings(&sc["targets"])) {
            let host = t.split(':').next().unwrap_or_default().to_string();
            assert!(
                hosts.contains(&host),
                "{name}: scrape target {t} is no service"
            );
            assert!(
                !in_profile(&host),
                "{name}: {t} runs only with a profile; a plain `up` would show it down"
            );
            scraped.insert(host);
        }
        let dns = job["dns_sd_configs"].as_sequence().into_iter().flatten();
        for sd in dns {
            assert!(
                sd["port"].as_u64().is_some(),
                "{name}: DNS discovery without a port"
            );
            for host in strings(&sd["names"]) {
                assert!(hosts.contains(&host), "{name}: {host} is no service");
                scraped.insert(host);
            }
        }
    }
    for (name, s) in &services {
        let is_scrapable =
            s["build"].is_string() || name.starts_with("nats-exporter") || name == "lb";
        if is_scrapable {
            assert!(scraped.contains(name), "Prometheus does not scrape {name}");
        }
    }
    // Grafana's data source is that Prometheus, under the uid every dashboard query names.
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let source = &ds["datasources"][0];
    assert_eq!(source["url"].as_str(), Some("http://prometheus:9090"));
    let uid = source["uid"].as_str().expect("uid");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboards/chatfabric.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(
                t["datasource"]["uid"].as_str(),
                Some(uid),
                "{}",
                panel["title"]
            );
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{}",
                panel["title"]
            );
        }
    }
}
