//! A minimal EC2 Query API client: the handful of calls a deploy needs, signed with SigV4.
//!
//! The official `aws-sdk-ec2` costs ~15 CPU-minutes and 8 GB of memory to compile for the eight
//! actions used here; the wire format (form-encoded request, XML answer) is simple and stable.
//! Credentials, region and endpoint come from the same `SdkConfig` as the EBS client, so
//! `AWS_ENDPOINT_URL` and profiles work alike for both.

use anyhow::{Context, Result};
use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use std::time::SystemTime;

const API_VERSION: &str = "2016-11-15";
/// EC2 answers for these calls are a few KiB; anything far larger is not EC2.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// An EC2 endpoint with credentials.
pub struct Ec2 {
    http: reqwest::Client,
    endpoint: String,
    region: String,
    credentials: aws_credential_types::provider::SharedCredentialsProvider,
}

/// An error EC2 returned (`<Errors><Error><Code>..</Code><Message>..</Message>`).
#[derive(Debug, thiserror::Error)]
#[error("EC2 {action}: {code}: {message}")]
pub struct Ec2Error {
    pub action: String,
    pub code: String,
    pub message: String,
}

impl Ec2 {
    /// Endpoint: `AWS_ENDPOINT_URL_EC2`, else the config's endpoint URL (`AWS_ENDPOINT_URL`),
    /// else EC2's regional endpoint.
    pub fn new(config: &aws_config::SdkConfig) -> Result<Self> {
        let region = config
            .region()
            .context("no AWS region: pass --region or set AWS_REGION")?
            .to_string();
        let endpoint = std::env::var("AWS_ENDPOINT_URL_EC2")
            .ok()
            .or_else(|| config.endpoint_url().map(str::to_owned))
            .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"));
        let credentials = config
            .credentials_provider()
            .context("no AWS credentials provider")?;
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()?,
            endpoint: format!("{}/", endpoint.trim_end_matches('/')),
            region,
            credentials,
        })
    }

    /// Calls `action` with `params`; the XML answer.
    pub async fn call(&self, action: &str, params: &[(String, String)]) -> Result<Response> {
        let mut form = url_form(&[("Action", action), ("Version", API_VERSION)]);
        for (key, value) in params {
            form.push('&');
            form.push_str(&url_form(&[(key.as_str(), value.as_str())]));
        }
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .context("loading AWS credentials")?;
        let identity = credentials.into();
        let signing_params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .context("SigV4 parameters")?
            .into();
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let signable = SignableRequest::new(
            "POST",
            &self.endpoint,
            [("content-type", content_type)].into_iter(),
            SignableBody::Bytes(form.as_bytes()),
        )
        .context("SigV4 request")?;
        let (instructions, _) = sign(signable, &signing_params)
            .context("signing the EC2 request")?
            .into_parts();
        let mut request = self
            .http
            .post(&self.endpoint)
            .header("content-type", content_type);
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
        let response = request
            .body(form)
            .send()
            .await
            .with_context(|| format!("EC2 {action} at {}", self.endpoint))?;
        let status = response.status();
        let body = crate::deploy::net::read_bounded(response, MAX_RESPONSE_BYTES)
            .await
            .with_context(|| format!("EC2 {action}"))?;
        let text = String::from_utf8(body)
            .with_context(|| format!("EC2 {action}: answer is not UTF-8"))?;
        let answer = Response::parse(text)
            .with_context(|| format!("EC2 {action}: answer is not XML (HTTP {status})"))?;
        if !status.is_success() {
            return Err(Ec2Error {
                action: action.to_owned(),
                code: answer.first("Code").unwrap_or_else(|| status.to_string()),
                message: answer.first("Message").unwrap_or_default(),
            }
            .into());
        }
        Ok(answer)
    }
}

/// An XML answer, queried by element name.
pub struct Response {
    text: String,
}

impl Response {
    fn parse(text: String) -> Result<Self> {
        roxmltree::Document::parse(&text)?;
        Ok(Self { text })
    }

    /// The text of the first element named `tag`, anywhere in the answer.
    pub fn first(&self, tag: &str) -> Option<String> {
        self.all(tag).into_iter().next()
    }

    /// The texts of every element named `tag`, in document order.
    pub fn all(&self, tag: &str) -> Vec<String> {
        let Ok(document) = roxmltree::Document::parse(&self.text) else {
            return Vec::new();
        };
        document
            .descendants()
            .filter(|node| node.has_tag_name(tag))
            .filter_map(|node| node.text().map(str::to_owned))
            .collect()
    }

    /// The texts of `tag` inside each element named `item` under an element named `list`
    /// (e.g. every `instanceState/name` of `instancesSet`).
    pub fn items(&self, list: &str, tag: &str) -> Vec<String> {
        let Ok(document) = roxmltree::Document::parse(&self.text) else {
            return Vec::new();
        };
        document
            .descendants()
            .filter(|node| node.has_tag_name(list))
            .flat_map(|list| list.children().filter(|node| node.has_tag_name("item")))
            .filter_map(|item| {
                item.children()
                    .find(|node| node.has_tag_name(tag))
                    .and_then(|node| node.text().map(str::to_owned))
            })
            .collect()
    }
}

/// `application/x-www-form-urlencoded` pairs (RFC 3986 unreserved kept, everything else
/// percent-encoded, as SigV4 expects).
fn url_form(pairs: &[(&str, &str)]) -> String {
    fn encode(text: &str, out: &mut String) {
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    let mut out = String::new();
    for (n, (key, value)) in pairs.iter().enumerate() {
        if n > 0 {
            out.push('&');
        }
        encode(key, &mut out);
        out.push('=');
        encode(value, &mut out);
    }
    out
}

/// Builds the numbered parameters of the Query API.
#[derive(Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.push((key.into(), value.into()));
        self
    }

    /// `TagSpecification.N` for `resource_type` with the given tags.
    pub fn tags(mut self, n: usize, resource_type: &str, tags: &[(&str, &str)]) -> Self {
        let prefix = format!("TagSpecification.{n}");
        self.0
            .push((format!("{prefix}.ResourceType"), resource_type.to_owned()));
        for (i, (key, value)) in tags.iter().enumerate() {
            let i = i + 1;
            self.0
                .push((format!("{prefix}.Tag.{i}.Key"), (*key).to_owned()));
            self.0
                .push((format!("{prefix}.Tag.{i}.Value"), (*value).to_owned()));
        }
        self
    }

    /// `Filter.N` = one tag filter.
    pub fn tag_filter(self, n: usize, key: &str, value: &str) -> Self {
        self.set(format!("Filter.{n}.Name"), format!("tag:{key}"))
            .set(format!("Filter.{n}.Value.1"), value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_matches_sigv4_rules() {
        assert_eq!(
            url_form(&[("A b", "x/y=z~._-"), ("k", "ü")]),
            "A%20b=x%2Fy%3Dz~._-&k=%C3%BC"
        );
    }

    #[test]
    fn answers_are_queried_by_element() {
        let answer = Response::parse(
            r#"<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
            <reservationSet><item><instancesSet>
              <item><instanceId>i-1</instanceId><instanceState><name>running</name></instanceState></item>
              <item><instanceId>i-2</instanceId></item>
            </instancesSet></item></reservationSet></DescribeInstancesResponse>"#
                .into(),
        )
        .unwrap();
        assert_eq!(answer.first("name").as_deref(), Some("running"));
        assert_eq!(
            answer.items("instancesSet", "instanceId"),
            vec!["i-1", "i-2"]
        );
        assert!(Response::parse("<unclosed>".into()).is_err());
    }
}
