"""BR-MTRL on Flower (``pip install 'brmtrl[flower]'``): a ``ClientApp`` and a ``ServerApp`` that call
the same client and server steps as the built-in engine, Flower's simulation engine, and a local
deployment of a SuperLink with SuperNodes (``brmtrl deploy-local``)."""
