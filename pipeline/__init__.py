"""pipeline"""

import paraforge_compat  # noqa: F401  (first, in every process)
