"""API keys of the Serve application (docs/serve.md, "Locking the endpoints").

    python jobs/api_keys.py add alice --file ~/.config/galeno/api-keys [--rate 120]   # prints the key once
    python jobs/api_keys.py list --file ~/.config/galeno/api-keys
    python jobs/api_keys.py remove alice --file ~/.config/galeno/api-keys
    python jobs/api_keys.py hash            # a key on stdin -> its sha256:HEX, for $GALENO_API_KEYS

The file holds only hashes (NAME sha256:HEX [RATE_PER_MINUTE]); keep it out of the repository.
"""

from galeno.serve.auth import main

if __name__ == "__main__":
    raise SystemExit(main())
