//! Placeholder: the ZooKeeper adapters are being written.

use super::{Ctx, Snapshot};

/// Which ZooKeeper layout a dump follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `/sofa-rpc/<interface>/providers/<bolt://…>`.
    SofaRpc,
    /// `/dubbo/<interface>/providers/<dubbo://…>`.
    Dubbo,
}

/// Reads a snapshot.
pub fn load(_ctx: &mut Ctx<'_>, _flavor: Flavor) -> Snapshot {
    Snapshot::default()
}
