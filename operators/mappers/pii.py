"""PII masking: e-mail addresses, phone numbers, IP addresses, credit-card and ID numbers → tokens."""

from __future__ import annotations

import regex
from pydantic import Field

from operators.base import Mapper, OperatorParams
from operators.registry import register

EMAIL = regex.compile(r"(?<![\w.+-])[A-Za-z0-9][\w.+-]*@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
URL = regex.compile(r"\bhttps?://[^\s\"'<>]+")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = regex.compile(rf"(?<![\d.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\d.]\d)")
IPV6 = regex.compile(r"(?<![\w:])(?:[\da-fA-F]{1,4}:){7}[\da-fA-F]{1,4}(?![\w:])")
# 13-19 digits, optionally grouped by single spaces or dashes; confirmed by the Luhn checksum.
CARD_CANDIDATE = regex.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# Chinese resident ID (18 characters, checksum verified) and US social security numbers.
CN_ID = regex.compile(
    r"(?<!\d)[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![\dXx])"
)
US_SSN = regex.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
PHONE = regex.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # international: +44 20 7946 0958
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]?\d{4}"  # North American: (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567
    r"|1[3-9]\d{9}"  # Chinese mobile: 13812345678
    r")(?!\d)"
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def cn_id_valid(number: str) -> bool:
    """GB 11643-1999 check character."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    checksum = sum(int(d) * w for d, w in zip(number[:17], weights, strict=True)) % 11
    return "10X98765432"[checksum] == number[17].upper()


@register("pii_mask_mapper")
class PiiMaskMapper(Mapper):
    """Mask personal data (e-mail, phone, IP, credit-card and ID numbers) with replacement tokens."""

    class Params(OperatorParams):
        mask_emails: bool = Field(True, description="Mask e-mail addresses.")
        mask_phones: bool = Field(True, description="Mask phone numbers (international, US, Chinese mobile).")
        mask_ips: bool = Field(True, description="Mask IPv4 and full IPv6 addresses.")
        mask_credit_cards: bool = Field(True, description="Mask card numbers of 13-19 digits passing the Luhn check.")
        mask_id_cards: bool = Field(True, description="Mask Chinese resident IDs (checksum verified) and US SSNs.")
        mask_urls: bool = Field(False, description="Mask http(s) URLs.")
        email_replacement: str = Field("[EMAIL]", description="Token for e-mail addresses.")
        phone_replacement: str = Field("[PHONE]", description="Token for phone numbers.")
        ip_replacement: str = Field("[IP]", description="Token for IP addresses.")
        credit_card_replacement: str = Field("[CREDIT_CARD]", description="Token for card numbers.")
        id_card_replacement: str = Field("[ID_NUMBER]", description="Token for ID numbers.")
        url_replacement: str = Field("[URL]", description="Token for URLs.")

    def process_text(self, text: str) -> str:
        p = self.params
        # Order matters: e-mails and URLs contain digits; card and ID numbers would otherwise look like phones.
        if p.mask_emails:
            text = EMAIL.sub(p.email_replacement, text)
        if p.mask_urls:
            text = URL.sub(p.url_replacement, text)
        if p.mask_credit_cards:
            text = CARD_CANDIDATE.sub(
                lambda m: p.credit_card_replacement if luhn_valid(regex.sub(r"\D", "", m[0])) else m[0], text
            )
        if p.mask_id_cards:
            text = CN_ID.sub(lambda m: p.id_card_replacement if cn_id_valid(m[0]) else m[0], text)
            text = US_SSN.sub(p.id_card_replacement, text)
        if p.mask_ips:
            text = IPV6.sub(p.ip_replacement, IPV4.sub(p.ip_replacement, text))
        if p.mask_phones:
            text = PHONE.sub(p.phone_replacement, text)
        return text
