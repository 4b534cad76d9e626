"""The alert sensors' resource: where notifications go (Slack, a webhook, both or neither)."""

import dagster as dg
from dagster_slack import SlackResource
from pydantic import Field

from ...core.errors import ConfigurationError
from ...core.monitoring.alerts import Channels, parse_level
from ...core.secrets import register_secret
from ..settings import env_field


class AlertSettings(dg.ConfigurableResource):
    """Where the alert sensors send notifications: Slack (dagster-slack, a bot token and a channel), a generic
    webhook (JSON POST), both, or neither (then alerts are only logged in the sensors' ticks)."""

    slack_token: str = env_field("SLACK_BOT_TOKEN", "", "Slack bot token, xoxb-... with chat:write")
    slack_channel: str = env_field("SLACK_CHANNEL", "", "Slack channel, e.g. #backups or C0123456")
    webhook_url: str = env_field("ALERT_WEBHOOK_URL", "", "Generic webhook receiving a JSON POST per alert")
    min_severity: str = env_field(
        "ALERT_MIN_SEVERITY",
        "warning",
        "Lowest severity sent to Slack/webhook: warning, high or critical; lower ones are only logged",
    )
    dagster_url: str = env_field("ALERT_DAGSTER_URL", "", "Base URL of the Dagster UI, for links in messages")
    slack_api_url: str = Field(
        default="", description="Slack Web API base URL override (a Slack-compatible gateway); empty = Slack"
    )
    timeout_s: float = Field(default=10.0, description="Timeout of one delivery (seconds)")

    def channels(self) -> Channels:
        """The configured channels; a half-configured Slack or a malformed URL is a ConfigurationError."""
        token, channel = self.slack_token.strip(), self.slack_channel.strip()
        self.secrets()  # registers the token and the webhook URL for redaction
        if token and not channel:
            raise ConfigurationError("SLACK_CHANNEL", "is not set but SLACK_BOT_TOKEN is", "set #channel or its id")
        if channel and not token:
            raise ConfigurationError(
                "SLACK_BOT_TOKEN", "is not set but SLACK_CHANNEL is", "set a bot token (xoxb-...) with chat:write"
            )
        url = self.webhook_url.strip()
        if url and not url.lower().startswith(("http://", "https://")):
            raise ConfigurationError("ALERT_WEBHOOK_URL", "is not an http(s) URL", "set https://host/path")
        post = None
        if token:
            client = SlackResource(token=token).get_client()
            if self.slack_api_url:
                client.base_url = self.slack_api_url.rstrip("/") + "/"

            def post(to: str, text: str) -> None:
                client.chat_postMessage(channel=to, text=text)

        return Channels(
            webhook_url=url,
            slack_channel=channel,
            slack_post=post,
            min_level=parse_level(self.min_severity),
            timeout_s=self.timeout_s,
        )

    def secrets(self) -> tuple[str, ...]:
        """The Slack token and the webhook URL (registered for redaction as well)."""
        found = tuple(s for s in (self.slack_token.strip(), self.webhook_url.strip()) if s)
        for secret in found:
            register_secret(secret)
        return found

    def link(self, path: str) -> str | None:
        return f"{self.dagster_url.rstrip('/')}/{path.lstrip('/')}" if self.dagster_url.strip() else None
