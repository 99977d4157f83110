//! Task events: recorded in the transaction of each change (`record`), then served
//! live to whoever follows an org or a task (`feed`).

pub mod feed;
pub mod record;

pub use feed::{EventHub, Follower, Item, LiveEvent, Pos, StoredEvent};
pub use record::record;
