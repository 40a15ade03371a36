//! Read receipts and unread counts.

use std::collections::BTreeMap;

use chatfabric_nats::ConvId;

use super::caller::Caller;
use super::context::Service;
use super::error::ServiceError;
use crate::receipts;

impl Service {
    /// Moves the caller's read cursor in `conv` forward to `seq` and announces it to the
    /// members; returns the cursor afterwards (the stored one if it was further).
    pub async fn mark_read(
        &self,
        caller: &Caller,
        conv: &ConvId,
        seq: u64,
    ) -> Result<u64, ServiceError> {
        self.require_member(caller, conv).await?;
        Ok(receipts::mark_read(&self.fabric, conv, caller.acting_as(), seq).await?)
    }

    /// Unread messages per conversation of the caller (those whose count could not be read are
    /// left out).
    pub async fn unread(&self, caller: &Caller) -> Result<BTreeMap<ConvId, u64>, ServiceError> {
        let user = caller.acting_as();
        let convs = self.membership.conv_ids_of(user).await?;
        Ok(receipts::unread_counts(&self.fabric, user, convs).await)
    }
}
