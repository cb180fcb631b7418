"""Check that a model can be served: :class:`ServableModule` (the interface) and :class:`ServableModuleValidator`
(a callback that serves the model over HTTP at the start of training and checks one request)."""
from featherlight.serve.servable_module import ServableModule
from featherlight.serve.servable_module_validator import ServableModuleValidator

__all__ = ["ServableModule", "ServableModuleValidator"]
