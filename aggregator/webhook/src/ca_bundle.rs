//! The webhook configuration's `caBundle`: the self-made CA the API server
//! verifies the webhook's certificate with.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::info;

/// Attempts at updating the webhook configuration against concurrent writers.
const CONFLICT_RETRIES: usize = 5;

/// The configuration could not be updated.
#[derive(Debug, thiserror::Error)]
#[error("MutatingWebhookConfiguration {0}: {1}")]
pub struct ConfigurationError(String, String);

/// Sets `caBundle` on every webhook of the configuration `name` (with the
/// resourceVersion it read, retrying on a conflict).
pub async fn publish_ca(
    client: Client,
    name: &str,
    ca_pem: &str,
) -> Result<(), ConfigurationError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let error = |e: kube::Error| ConfigurationError(name.to_string(), e.to_string());
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    for _ in 0..CONFLICT_RETRIES {
        let mut configuration = api.get(name).await.map_err(error)?;
        let webhooks = configuration.webhooks.iter_mut().flatten();
        let mut changed = false;
        for webhook in webhooks {
            if webhook.client_config.ca_bundle.as_ref() != Some(&bundle) {
                webhook.client_config.ca_bundle = Some(bundle.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        match api
            .replace(name, &PostParams::default(), &configuration)
            .await
        {
            Ok(_) => {
                info!(configuration = name, "published the webhook CA");
                return Ok(());
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => return Err(error(e)),
        }
    }
    Err(ConfigurationError(
        name.to_string(),
        format!("still conflicting after {CONFLICT_RETRIES} attempts"),
    ))
}
