"""krunbox: micro-VM sandboxes from Python, through `krunbox serve`.

>>> import krunbox
>>> with krunbox.Krunbox() as kb:
...     print(kb.run(["uname", "-r"]).stdout)
"""

from ._async import AsyncExecution, AsyncKrunbox, AsyncSandbox
from ._common import STDERR, STDOUT, ExecResult, KrunboxError
from ._sync import Execution, Krunbox, Sandbox

__all__ = [
    "AsyncExecution", "AsyncKrunbox", "AsyncSandbox", "ExecResult", "Execution", "Krunbox",
    "KrunboxError", "STDERR", "STDOUT", "Sandbox",
]
