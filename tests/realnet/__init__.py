"""Real traffic for the end-to-end test: namespaces, a lossy relay, nginx, an app, clients, captures."""
