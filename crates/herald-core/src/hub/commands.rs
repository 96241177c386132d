//! Cluster commands: what the server API asks of a user's connections wherever they are
//! (disconnect them, unsubscribe them from a channel). The API hands a [`ClusterCommand`] to the
//! engine, which brings it to every node's hub, this one included; here it is carried out on the
//! connections this node holds.

use crate::engine::ClusterCommand;
use crate::error::{CloseCode, Disconnect};

use super::outbox::Outbound;
use super::Hub;

// === impl Hub ===

impl Hub {
    /// Carries out `command` on this node's connections.
    pub(super) fn run_command(&self, command: ClusterCommand) {
        match command {
            ClusterCommand::DisconnectUser { user, reconnect } => {
                for session in self.shared.index.sessions_of(&user) {
                    let mut d = Disconnect::new(
                        CloseCode::DisconnectedByApi,
                        "disconnected by the server API",
                    );
                    d.reconnect = reconnect;
                    session.outbox.close(d);
                }
            }
            ClusterCommand::UnsubscribeUser { user, channel } => {
                for session in self.shared.index.sessions_of(&user) {
                    if self.remove_subscription(&session, &channel) {
                        // A notice, not a publication: not counted as a delivery.
                        let stats = &self.shared.stats;
                        session.deliver(Outbound::Unsubscribed(channel.clone()), true, stats);
                        self.spawn_sync_after_leave(&channel, &session);
                    }
                }
            }
        }
    }
}
