//! Following the metadata log: every image the controller applies becomes
//! the catalog every shard reads (published atomically), and each shard
//! reconciles its partitions with it (opens, roles, configs, deletes).
//! Runs on shard 0; images are applied one at a time, in order, and a
//! burst of them is applied as its latest.

use std::rc::Rc;
use std::sync::Arc;

use futures::StreamExt;

use crate::catalog::Catalog;
use crate::shard::{Shard, apply_everywhere};

pub(crate) fn spawn_follower(shard: Rc<Shard>) {
    let mut images = shard.shared.controller().subscribe();
    glommio::spawn_local(async move {
        while let Some(mut image) = images.next().await {
            // Only the newest of what has queued up matters.
            while let Ok(newer) = images.try_recv() {
                image = newer;
            }
            if shard.stopping.get() {
                return;
            }
            let catalog = Arc::new(Catalog::from_image_after(&image, &shard.shared.catalog.load()));
            shard.shared.catalog.store(catalog.clone());
            apply_everywhere(&shard, &catalog).await;
        }
    })
    .detach();
}
