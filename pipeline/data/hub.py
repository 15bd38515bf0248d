"""The HuggingFace hub as a source: the paper's data sets by id, config and split.

`load_dataset` retries unreachable hosts for minutes before failing, so a short HEAD request to
the hub decides first: when it fails, the source fails at once with a message that says how to
use local files instead. With `HF_HUB_OFFLINE=1` no request is made and `load_dataset` reads the
local cache (or fails at once when the set was never downloaded).

The ids this project's configs use, with their quirks (checked on the hub pages):
- `wmt/wmt14`, config `fr-en`: train / validation / test (newstest2014, 3003 lines).
- `IWSLT/mt_eng_vietnamese`, config `iwslt2015-en-vi`: a loading script, which `datasets` 5 no
  longer runs; `hub_revision: refs/convert/parquet` reads the hub's Parquet conversion.
- `stanfordnlp/imdb`: train / test (and `unsupervised`, labels -1).
- `fancyzhx/yelp_polarity`: train / test only: validation is carved from train.
- `nyu-mll/glue`, config `sst2` (text field `sentence`): test labels are -1, so the validation
  split serves as test and validation is carved from train.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request

from heat.validation import ConfigError
from pipeline.data.schema import Schema

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0


def offline_advice(schema: Schema) -> str:
    advice = (
        "use `data.source: local` with `data.files: {train: PATH, validation: PATH, test: PATH}` "
        f"(JSONL, TSV or Parquet; rows {schema.describe()})"
    )
    if _hub_is_offline():
        return f"HF_HUB_OFFLINE is set and the set is not in the HuggingFace cache: {advice}"
    return f"{advice}, or set HF_HUB_OFFLINE=1 to read a copy already in the HuggingFace cache"


def _hub_is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def check_reachable(hub_id: str, schema: Schema) -> None:
    """Raise a `ConfigError` naming data.hub_id within seconds when the hub cannot be reached."""
    if _hub_is_offline():
        return
    from huggingface_hub import constants

    request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # the hub answered: it is reachable
    except (OSError, ValueError) as error:  # URLError, timeouts, refused connections
        raise ConfigError(
            "data.hub_id",
            f"cannot reach the HuggingFace hub ({constants.ENDPOINT}: {error}) to load "
            f"{hub_id!r}; {offline_advice(schema)}",
        ) from None
