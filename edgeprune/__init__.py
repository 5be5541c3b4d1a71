"""edgeprune: lottery tickets for spiking neural networks, ready for edge devices."""
import warnings

# norse.torch prints FutureWarnings about torch.jit.script on import; they are not ours to fix.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"norse(\..*)?")
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

__version__ = "0.1.0"
