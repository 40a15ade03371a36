//! On a 3-node JetStream cluster with 3 replicas, killing any one NATS server loses no
//! acknowledged message, and subscribers still see a gap-free, duplicate-free sequence.

use std::time::Duration;

use crate::support::{fabric::cluster_fabric, Client, TestGateway};
use serde_json::json;

#[tokio::test]
async fn killing_a_nats_node_loses_no_acknowledged_message() {
    let mut nodes = crate::support::fabric::start_cluster().await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    // Gateways connect to different nodes first; each knows all three.
    let parts1 = cluster_fabric(&urls, 0).await;
    let g1_node = parts1.node(&nodes);
    let g1 = TestGateway::start_on(&parts1).await;
    let g2 = TestGateway::start_on(&cluster_fabric(&urls, 1).await).await;
    let mut alice = Client::connect(&g1.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    let mut bob = Client::connect(&g2.ws_url(), "bob").await;
    bob.subscribe(&conv, None).await;

    let mut acked = Vec::new();
    for i in 0..100 {
        if i == 40 {
            nodes[g1_node].kill(); // the node alice's gateway is connected to
        }
        // Retry with the same client id until acknowledged, as a client does.
        let id = format!("k{i}");
        let seq = loop {
            alice
                .send(json!({"op":"send","conv":conv,"client_id":id,"body":format!("m{i}")}))
                .await;
            let r = alice.reply().await;
            match r["op"].as_str() {
                Some("ack") => break r["seq"].as_u64().unwrap(),
                _ => {
                    assert_eq!(r["code"], "unavailable", "{r}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        acked.push(seq);
    }
    let got = bob.msgs(100).await; // checks the prev chain: no gap, no reorder
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), acked);
    assert_eq!(got.last().unwrap().1, "m99");
    bob.no_msg_within(Duration::from_millis(300)).await;
}
