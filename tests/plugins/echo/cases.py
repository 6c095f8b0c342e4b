from __future__ import annotations

from editq.providers.cases import Cases

CASES = Cases(accepted=[{}, {"output_format": "jpeg"}], refused=[({"num_images": 2}, "num_images=2")])
