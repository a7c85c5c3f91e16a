//! Webhook URLs are credentials (a Slack incoming webhook's path is its secret): they
//! are never printed, whatever prints them.

use std::fmt;

use crate::error::{Error, Result};

/// A webhook URL as given by a flag or its env twin. `Debug` and `Display` show only
/// the scheme and host; [`WebhookUrl::expose`] is the one way to the value.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    /// clap's parser. It never fails, so clap never quotes the value in an error;
    /// [`WebhookUrl::validate`] checks it with an error that names only the flag.
    pub fn from_flag(value: &str) -> std::result::Result<WebhookUrl, std::convert::Infallible> {
        Ok(WebhookUrl(value.trim().to_string()))
    }

    /// An empty value (an empty key of the Secret) means no webhook.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An absolute http(s) URL with a host, or an error naming `flag` only.
    pub fn validate(&self, flag: &str) -> Result<()> {
        match reqwest::Url::parse(&self.0) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
            _ => Err(Error::Invalid(format!(
                "{flag} is not an absolute http(s) URL (value not shown: it is a secret)"
            ))),
        }
    }

    /// The URL itself, for the request and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match reqwest::Url::parse(&self.0) {
            Ok(url) => write!(
                f,
                "{}://{}/<redacted>",
                url.scheme(),
                url.host_str().unwrap_or_default()
            ),
            Err(_) => f.write_str("<redacted>"),
        }
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLACK: &str = "https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX";

    #[test]
    fn debug_and_display_show_the_host_only() {
        let url = WebhookUrl::from_flag(SLACK).unwrap();
        for shown in [
            format!("{url}"),
            format!("{url:?}"),
            format!("{:?}", Some(&url)),
        ] {
            assert!(!shown.contains("secret"), "{shown}");
            assert!(!shown.contains("T000"), "{shown}");
            assert!(shown.contains("hooks.slack.com"), "{shown}");
        }
        let with_password = WebhookUrl::from_flag("https://user:pw@example.com/x?token=t").unwrap();
        let shown = format!("{with_password} {with_password:?}");
        assert!(!shown.contains("pw") && !shown.contains("token"), "{shown}");
        assert_eq!(url.expose(), SLACK);
    }

    #[test]
    fn a_bad_url_is_refused_without_quoting_it() {
        for bad in [
            "hooks.slack.com/secretpath",
            "ftp://x/secretpath",
            "secretpath",
        ] {
            let error = WebhookUrl::from_flag(bad)
                .unwrap()
                .validate("--slack-webhook-url")
                .unwrap_err()
                .to_string();
            assert!(!error.contains("secretpath"), "{error}");
            assert!(error.contains("--slack-webhook-url"), "{error}");
            let shown = format!("{}", WebhookUrl::from_flag(bad).unwrap());
            assert!(!shown.contains("secretpath"), "{shown}");
        }
        WebhookUrl::from_flag(SLACK)
            .unwrap()
            .validate("--slack-webhook-url")
            .unwrap();
    }
}
