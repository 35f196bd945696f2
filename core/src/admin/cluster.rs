//! `GET /admin/cluster`: this node's view of the cluster: whether the store
//! answers, the live nodes, its calls, and per scope the limits with the
//! most a window can exceed them by (the overshoot bound, see `cluster`).

use crate::server::{ClientConn, Outcome};
use crate::shard::Shard;
use serde_json::json;
use std::time::{Duration, Instant};

pub async fn cluster(shard: &Shard, conn: &mut ClientConn, rid: &str) -> Outcome {
    let Some(link) = shard.admission.cluster_link() else {
        return super::reply(conn, 200, &json!({ "cluster": null }), rid).await;
    };
    let (tx, rx) = crossbeam::channel::bounded(1);
    if link.tx.send(crate::cluster::ToNode::Status(tx)).is_err() {
        return super::reply(conn, 503, &json!({ "error": { "message": "the node thread has stopped", "type": "server_error", "param": null, "code": "cluster_stopped" } }), rid).await;
    }
    // The node thread answers between store calls: at most one call's
    // timeout away.
    let give_up = Instant::now() + Duration::from_secs(2);
    loop {
        match rx.try_recv() {
            Ok(status) => {
                return super::reply(conn, 200, &json!({ "cluster": status }), rid).await;
            }
            Err(crossbeam::channel::TryRecvError::Empty) if Instant::now() < give_up => {
                glommio::timer::sleep(Duration::from_millis(2)).await;
            }
            Err(_) => {
                return super::reply(conn, 503, &json!({ "error": { "message": "the node thread did not answer within 2s", "type": "server_error", "param": null, "code": "cluster_busy" } }), rid).await;
            }
        }
    }
}
