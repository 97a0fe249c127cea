"""The fetch half of the OpenADR 2.0b VEN: openleadr's ``OpenADRClient``, with a VTN that does not answer
made an exception.

openleadr's ``_perform_request`` logs two ERROR lines and returns ``(None, {})`` when it cannot reach
the VTN, so its caller cannot tell an unreachable VTN from an empty answer, and a VEN polling a VTN
that is down logs two ERROR lines per poll. :class:`VtnClient` replaces that one method: no answer (the
connection refused or lost, a timeout) or an HTTP status other than 200 raises
:class:`~market_adapters.openadr2.VtnUnreachableError`, which :class:`~market_adapters.openadr2.Ven`
counts, logs once per change and retries with backoff. What an answer is read with is openleadr's own
(schema validation, the VTN's signature when a fingerprint is set, parsing, its hooks), as in
openleadr 0.5.34. :meth:`VtnClient.send_report` replaces openleadr's report queue worker, whose
failures it logged as ERROR per report.

Imported when a VEN starts (openleadr and its XML signing stack take ~0.5 s to import).
"""

from __future__ import annotations

import warnings
from http import HTTPStatus
from typing import Any

import aiohttp
from lxml.etree import XMLSyntaxError
from signxml.exceptions import InvalidSignature

from market_adapters.openadr2 import VtnUnreachableError, logger

with warnings.catch_warnings():
    # openleadr imports signxml, whose signer names cryptography's DSA key type in an annotation;
    # cryptography >= 51 deprecates DSA with a warning at that lookup. We never sign with DSA.
    warnings.filterwarnings("ignore", message="DSA is deprecated", module="signxml")
    from openleadr import OpenADRClient, errors, objects, utils
    from openleadr.messaging import parse_message, validate_xml_schema, validate_xml_signature


__all__ = ["VtnClient", "objects"]


class VtnClient(OpenADRClient):
    """``OpenADRClient`` whose requests raise :class:`VtnUnreachableError` when the VTN does not answer."""

    async def _perform_request(self, service: str, message: Any) -> tuple[str | None, dict[str, Any]]:
        await self._ensure_client_session()
        url = f"{self.vtn_url}/{service}"
        try:
            await self._execute_hooks("before_send_xml", utils.ensure_str(message))
            async with self.client_session.post(url, data=message) as answer:
                content = await answer.read()
                await self._execute_hooks("after_receive_xml", utils.ensure_str(content))
        except aiohttp.ClientConnectorError as err:
            raise VtnUnreachableError(f"{url}: {type(err.os_error).__name__}: {err}") from err
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise VtnUnreachableError(f"{url}: {type(err).__name__}: {err}".rstrip(": ")) from err
        if answer.status != HTTPStatus.OK:
            text = content.decode("utf-8", "replace")[:200]
            raise VtnUnreachableError(f"{url}: HTTP {answer.status} {answer.reason}: {text}".rstrip(": "))
        if not content:
            return None, {}
        return await self._read_answer(content)

    async def _read_answer(self, content: bytes) -> tuple[str | None, dict[str, Any]]:
        """openleadr's reading of an answer: schema, signature, parse; a bad one is logged and empty."""
        try:
            await self._execute_hooks("before_schema_validation", utils.ensure_str(content))
            tree = validate_xml_schema(content)
            if self.vtn_fingerprint:
                validate_xml_signature(tree, cert_fingerprint=self.vtn_fingerprint)
            await self._execute_hooks("before_parse_xml", utils.ensure_str(content))
            message_type, message_payload = parse_message(content)
            await self._execute_hooks("after_parse_xml", message_type, message_payload)
        except XMLSyntaxError as err:
            logger.warning("VTN answer did not pass XML schema validation: %s", err)
            return None, {}
        except errors.FingerprintMismatch as err:
            logger.warning("VTN answer signed by another certificate: %s", err)
            return None, {}
        except InvalidSignature:
            logger.warning("VTN answer had an invalid signature; ignored")
            return None, {}
        except Exception as err:
            logger.error("VTN answer could not be parsed or validated: %s", err)
            return None, {}
        response = message_payload.get("response") or {}
        if response.get("response_code", 200) != 200:
            logger.warning(
                "VTN answered %s with %s: %s",
                message_type,
                response.get("response_code"),
                response.get("response_description"),
            )
        return message_type, message_payload

    async def send_report(self, report: Any) -> None:
        """Send one queued report (``oadrUpdateReport``); :class:`VtnUnreachableError` if it cannot.
        The answer is not read further (neither did openleadr's worker)."""
        message = self._create_message(
            "oadrUpdateReport", ven_id=self.ven_id, request_id=utils.generate_id(), reports=[report]
        )
        await self._perform_request("EiReport", message)
