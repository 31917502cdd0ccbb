//! Reaching a running sandbox's guest agent from a request.

use std::time::Duration;

use krunbox_protocol::client::Client;

use super::error::{blocking, ApiError};
use crate::backend::VmHandle;
use crate::sandbox::attach::AttachedVm;
use crate::sandbox::spec::SandboxSpec;
use crate::sandbox::store::Store;

/// How long connecting to a running sandbox's agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The spec of the running sandbox `name` and a fresh connection to its agent (each request
/// its own, so one client's end never touches another's).
pub async fn connect(name: &str) -> Result<(SandboxSpec, Client), ApiError> {
    let name = name.to_owned();
    let (spec, address) = blocking(move || {
        let sandbox = Store::new()?.open(&name)?;
        let spec = sandbox.spec()?;
        let vm = AttachedVm::new(sandbox)?;
        Ok((spec, vm.agent_address()))
    })
    .await?;
    let client = tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(&address))
        .await
        .map_err(|_| {
            ApiError::Internal(format!(
                "its agent did not answer within {CONNECT_TIMEOUT:?}"
            ))
        })??;
    Ok((spec, client))
}
