"""One price table for cost estimates: Twilio per minute per country, OpenAI per token.

Figures are list prices as configured here (USD), used only for estimates in call records;
override them per stack. They are not fetched from anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field


class PriceTable(BaseModel):
    model_config = ConfigDict(frozen=True)

    # Inbound voice per minute by ISO country of the called number.
    twilio_inbound_per_min: Mapping[str, float] = Field(
        default_factory=lambda: {"US": 0.0085, "GB": 0.01, "PK": 0.0125, "CA": 0.0085}
    )
    twilio_default_per_min: float = 0.0125
    # OpenAI gpt-realtime, USD per one million tokens.
    audio_input_per_m: float = 32.0
    audio_output_per_m: float = 64.0
    text_input_per_m: float = 4.0
    text_output_per_m: float = 16.0

    def telephony(self, country: str, seconds: float) -> float:
        """Twilio bills whole minutes, rounded up."""
        minutes = int(-(-seconds // 60)) if seconds > 0 else 0
        return minutes * self.twilio_inbound_per_min.get(
            country.upper(), self.twilio_default_per_min
        )

    def model(self, audio_in: int, audio_out: int, text_in: int, text_out: int) -> float:
        return (
            audio_in * self.audio_input_per_m
            + audio_out * self.audio_output_per_m
            + text_in * self.text_input_per_m
            + text_out * self.text_output_per_m
        ) / 1_000_000


DEFAULT_PRICES = PriceTable()
