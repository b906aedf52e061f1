{#
  The rows of one stage across every dataset, with a `dataset` column taken from the file path
  (<storage root>/<dataset>/<stage>.parquet). `columns` maps column → SQL type: the contract columns a model
  reads. A stage no dataset has produced yet reads as an empty table of those columns, so reports build early.
  The `source()` call records the lineage (Dagster maps each source to the stage's assets).
#}
{% macro stage_rows(stage, columns) -%}
  {%- set relation = source('datamate', stage) -%}
  {%- set files = var('stage_files', {}).get(stage, []) -%}
  {%- if files -%}
    select
      regexp_extract(filename, '([^/]+)/[^/]+\.parquet$', 1) as dataset
      {%- for name, type in columns.items() %}, cast("{{ name }}" as {{ type }}) as "{{ name }}"{% endfor %}
    from read_parquet([{% for f in files %}'{{ f }}'{{ ", " if not loop.last }}{% endfor %}],
                      filename = true, union_by_name = true)
  {%- else -%}
    select
      cast(null as varchar) as dataset
      {%- for name, type in columns.items() %}, cast(null as {{ type }}) as "{{ name }}"{% endfor %}
    where false
  {%- endif -%}
{%- endmacro %}
