-- docker-compose only: the registry's store beside the application database.
CREATE DATABASE apicurio OWNER taskfactory;
