"""Reading inputs and writing outputs: session readers, the store table, atomic writers and the
ownership marks of output folders. Imports only `pipelines.core` and `pipelines.config`."""
