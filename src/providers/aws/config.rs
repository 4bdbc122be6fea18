//! The `aws` provider's configuration and its checks.

use super::*;

/// Configuration of an `aws` provider (AWS Secrets Manager).
///
/// A secret reference `aws/<path>` names the secret by its name (e.g. `prod/app/db`) or ARN.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// AWS region, e.g. `"eu-west-1"`. Default: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else
    /// the `region` of the profile in the shared config file. None of them: the provider does
    /// not start, with an error naming this field.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL (a VPC endpoint, or a local moto_server in tests). Default
    /// `https://secretsmanager.<region>.amazonaws.com` (`.amazonaws.com.cn` for `cn-` regions).
    /// Plain `http` is accepted only for a loopback host, or with `allow_http = true`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Allow an `http://` endpoint on a non-loopback host (requests and answers, secrets
    /// included, then cross the network unencrypted). Default `false`.
    #[serde(default)]
    pub allow_http: bool,
    /// Profile of the shared credentials/config files. Default `AWS_PROFILE`, else `"default"`.
    #[serde(default)]
    pub profile: Option<String>,
}

impl AwsConfig {
    /// Every semantic problem, each `PREFIX.field: what is wrong and what to do`.
    ///
    /// Checks: `region` looks like a region name, `endpoint` is an http(s) URL (plain http only
    /// for loopback or with `allow_http`), `profile` is not empty, `timeout` is not zero. Does
    /// not touch the network, the environment or the credential files.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errs = Vec::new();
        if let Some(region) = &self.region {
            if let Err(e) = check_region(region) {
                errs.push(format!("{prefix}.region: {e}"));
            }
        }
        if let Some(endpoint) = &self.endpoint {
            if let Err(e) = parse_endpoint(endpoint, self.allow_http) {
                errs.push(format!("{prefix}.endpoint: {e}"));
            }
        }
        if self.profile.as_deref().is_some_and(|p| p.trim().is_empty()) {
            errs.push(format!(
                "{prefix}.profile: is empty: name a profile of ~/.aws/credentials (e.g. \
                 \"default\"), or remove the field"
            ));
        }
        errs
    }
}

/// A region name: lowercase letters, digits and dashes, like `eu-west-1`.
pub(super) fn check_region(region: &str) -> Result<(), String> {
    let ok = !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{region}` is not an AWS region name: write it like \"eu-west-1\" or \"us-east-1\""
        ))
    }
}

/// Parses and checks an endpoint URL; the error says what is wrong and what to write.
pub(super) fn parse_endpoint(endpoint: &str, allow_http: bool) -> Result<Url, String> {
    let hint = "write it like \"https://secretsmanager.eu-west-1.amazonaws.com\" or \
                \"http://127.0.0.1:5000\"";
    let url = Url::parse(endpoint.trim())
        .map_err(|e| format!("`{endpoint}` is not an http(s) URL ({e}): {hint}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "`{endpoint}` is not an http(s) URL (scheme `{}`): {hint}",
            url.scheme()
        ));
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(format!("`{endpoint}` has no host: {hint}"));
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{endpoint}` has a query or fragment: give only the base URL, {hint}"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the URL contains credentials: remove them (credentials come from the environment, \
             the shared credentials file or the instance role)"
                .into(),
        );
    }
    if url.scheme() == "http" && !allow_http {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = bare.eq_ignore_ascii_case("localhost")
            || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "`{endpoint}` uses plain http to a host that is not loopback: secrets would \
                 cross the network unencrypted; use https, or set allow_http = true if this \
                 network is trusted"
            ));
        }
    }
    Ok(url)
}

/// The default endpoint of a region.
pub(super) fn default_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://{SERVICE}.{region}.{suffix}")
}
