"""Torch-free persistence shared by the API and the worker: settings, database, storage, job repository, queue."""
